#!/usr/bin/env bash
# Installs the Debian documentation packages that training.data.DEFAULT_SOURCES reads (the
# training corpus for small MeKi models), then prints the installed versions.
# Debian 12 (bookworm); needs root. Versions used for data_out/ are recorded in its meta.json.
set -euo pipefail
PACKAGES=(python3.11-doc linux-doc-6.1 python-django-doc postgresql-doc-15 perl-doc
          debian-reference-en debian-handbook apache2-doc git-doc nodejs-doc sqlite3-doc sphinx-doc
          cmake-doc octave-doc python-sklearn-doc python-flask-doc)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}"
dpkg-query -W -f='${Package} ${Version}\n' "${PACKAGES[@]}"
