#!/bin/sh
# Prestart step of a release (the Kubernetes migration Job runs it): wait until the
# database accepts connections, then apply the Alembic migrations. Run it once per
# release, not in every replica; `vr1 db upgrade` is a no-op when the schema is current.
set -eu
python -m shared.healthcheck wait-db --timeout "${VR1_WAIT_DB_TIMEOUT_S:-120}"
exec vr1 db upgrade
