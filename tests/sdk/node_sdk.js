// Drives node-quickbooks, unchanged, against a gateway: tests/test_sdks.py starts the gateway
// and the simulator, writes a plan of steps as JSON on stdin and reads one JSON result per
// step on stdout. The only thing pointed elsewhere is the SDK's own `endpoint` (its base URL);
// the caller key travels as the SDK's OAuth 2 access token, as the README says.
'use strict';

const QuickBooks = require('node-quickbooks');

function sdk(gateway, realm, key) {
  const qbo = new QuickBooks(
    'unused-client-id', 'unused-client-secret', key, false, realm,
    true, false, 75, '2.0', null);
  qbo.endpoint = gateway + '/v3/company/';
  return qbo;
}

// Each step maps to one SDK call; the callback's (err, body, res) becomes a plain result.
const STEPS = {
  companyInfo: (q, s, cb) => q.getCompanyInfo(s.realm, cb),
  getCustomer: (q, s, cb) => q.getCustomer(s.id, cb),
  findCustomersAll: (q, s, cb) => q.findCustomers({ fetchAll: true, limit: s.limit }, cb),
  countCustomers: (q, s, cb) => q.findCustomers({ count: true }, cb),
  createCustomer: (q, s, cb) => q.createCustomer({ DisplayName: s.name }, cb),
  sparseUpdateCustomer: (q, s, cb) => q.updateCustomer(
    { Id: s.id, SyncToken: s.syncToken, sparse: true, DisplayName: s.name }, cb),
  batchCreateCustomers: (q, s, cb) => q.batch(
    s.names.map((name, i) => ({ bId: 'b' + i, operation: 'create', Customer: { DisplayName: name } })),
    (err, body, res) => cb(err, err ? body : batchResult(body), res)),
};

// The same shape python-quickbooks' BatchResponse gives: created entities and a fault count.
function batchResult(body) {
  const items = (body && body.BatchItemResponse) || [];
  return {
    successes: items.filter((item) => item.Customer).map((item) => item.Customer),
    faults: items.filter((item) => item.Fault).length,
  };
}

function describeError(err, body, res) {
  const answer = res || (err && err.response);
  const data = body || (answer && answer.data);
  const fault = data && data.Fault;
  const first = fault && fault.Error && fault.Error[0];
  return {
    ok: false,
    error: err && err.name ? err.name : typeof err,
    status: answer ? answer.status : null,
    gatewayError: answer && answer.headers ? answer.headers['x-qbo-gateway-error'] || null : null,
    faultType: fault ? fault.type || null : null,
    code: first ? first.code : null,
    message: first ? first.Message : null,
  };
}

function run(qbo, step) {
  return new Promise((resolve) => {
    STEPS[step.op](qbo, step, (err, body, res) => {
      if (err) {
        resolve({ op: step.op, ...describeError(err, body, res) });
      } else {
        resolve({ op: step.op, ok: true, status: res ? res.status : null, body });
      }
    });
  });
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const plan = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const qbo = sdk(plan.gateway, plan.realm, plan.key);
  for (const step of plan.steps) {
    const result = await run(qbo, { realm: plan.realm, ...step });
    process.stdout.write(JSON.stringify(result) + '\n');
  }
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n');
  process.exit(1);
});
