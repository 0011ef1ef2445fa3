"""Read economy: what the gateway spends of the app's metered (CorePlus) QBO reads.

Intuit meters data-out calls per app and month and blocks every read past the limit, so the
gateway, which sees every service's calls, counts them (`meter`), reports and alerts on the
month's use, and spends fewer near the cap (`guard`).
"""
