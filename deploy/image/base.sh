#!/usr/bin/env bash
# Make the image's base: a Debian bookworm root with Python 3.11 and nothing else it does not
# need, as a tarball for `podman import`. Used where no registry serves python:3.11-slim; the
# Dockerfile takes it as --build-arg PYTHON_IMAGE. Only Debian's own packages go in.
#
#   variant essential   no apt in the image: nothing installs packages at run time
#   merged-usr hook     bookworm's layout without the usrmerge package (which drags in perl)
#   path-exclude        docs, man pages, info and translations are never read in a container
# Usage: deploy/image/base.sh OUT.tar
set -euo pipefail
out=${1:?usage: base.sh OUT.tar}
mmdebstrap --quiet --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    bookworm "$out"
