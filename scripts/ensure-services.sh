#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the integration tests use are up; start them where
# this machine can, and say exactly what is missing where it cannot.
set -u
PGHOST=${VR1_TEST_PGHOST:-127.0.0.1}
REDIS_PORT=${VR1_TEST_REDIS_PORT:-6379}
missing=0

pg_up() { pg_isready -q -h "$PGHOST" -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 1 20); do pg_up && break; sleep 0.5; done
  fi
  pg_up || { echo "PostgreSQL is not running on $PGHOST:5432 and could not be started" >&2; missing=1; }
fi

if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis"
    mkdir -p /tmp/vr1-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
      --appendonly no --dir /tmp/vr1-redis --logfile /tmp/vr1-redis/redis.log || true
    for _ in $(seq 1 20); do redis_up && break; sleep 0.5; done
  fi
  redis_up || { echo "Redis is not running on 127.0.0.1:$REDIS_PORT and could not be started" >&2; missing=1; }
fi

if [ "$missing" -ne 0 ]; then
  echo "The integration tests need PostgreSQL (trust auth for user postgres) and Redis on loopback." >&2
  exit 1
fi
