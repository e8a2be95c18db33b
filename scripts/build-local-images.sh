#!/bin/sh
# Builds drop-in Postgres and Redis images from Debian's packages, for
# machines that cannot pull from a registry:
#
#   poolstress/postgres:15-local   (postgresql-15 from Debian bookworm)
#   poolstress/redis:7-local       (redis-server 7.0 from Debian bookworm)
#
# Each image is a Debian root file system made by mmdebstrap and loaded with
# `docker import`; nothing is pulled from a registry. An image that already
# exists is not rebuilt (pass --force to rebuild).
#
# The entrypoints honour the official images' contract that
# testcontainers-modules relies on:
#   postgres: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB /
#             POSTGRES_HOST_AUTH_METHOD, /docker-entrypoint-initdb.d/*.sql|*.sh,
#             port 5432, extra arguments passed to postgres (`-c fsync=off`),
#             "database system is ready to accept connections" on stdout AND
#             stderr once it accepts connections;
#             POSTGRES_SSL=on enables TLS with a self-signed certificate
#             (the snakeoil certificate Debian's ssl-cert package generates);
#   redis:    port 6379, extra arguments passed to redis-server, no
#             persistence, "Ready to accept connections" on stdout.
#
# Use them:
#   POOLSTRESS_BACKEND=docker \
#   POOLSTRESS_POSTGRES_IMAGE=poolstress/postgres:15-local \
#   POOLSTRESS_REDIS_IMAGE=poolstress/redis:7-local \
#   cargo test --test stress -- --include-tag layer_3
#
# Needs: docker, mmdebstrap, and Debian's apt mirror (MIRROR, default
# http://deb.debian.org/debian). Runs as root, or as a user who can run
# mmdebstrap in unshare mode and talk to docker.
set -eu

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PG_MAJOR=${PG_MAJOR:-15}
PG_IMAGE=${PG_IMAGE:-poolstress/postgres:${PG_MAJOR}-local}
REDIS_IMAGE=${REDIS_IMAGE:-poolstress/redis:7-local}
FORCE=0

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    echo "Options: --force (rebuild existing images), --only postgres|redis, -h"
}

ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --only) shift; ONLY=${1:-} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

for tool in docker mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "error: $tool not found; install it (apt-get install $tool) or use POOLSTRESS_BACKEND=local" >&2
        exit 1
    }
done
docker info >/dev/null 2>&1 || { echo "error: the docker engine does not answer (docker info failed)" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM

# --- entrypoints -----------------------------------------------------------

cat >"$WORK/postgres-entrypoint.sh" <<'EOF'
#!/bin/sh
# poolstress drop-in for the official postgres image's entrypoint.
set -eu
PGBIN=/usr/lib/postgresql/@PG_MAJOR@/bin
export PATH="$PGBIN:$PATH"
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
# `docker run image postgres -c x=y` and `docker run image -c x=y` both start the server;
# any other command runs as given.
if [ "${1:-}" = "postgres" ]; then shift; fi
case "${1:-}" in
    ""|-*) ;;
    *) exec "$@" ;;
esac

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
AUTH=${POSTGRES_HOST_AUTH_METHOD:-}
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"

# The image carries a cluster made at build time (superuser postgres, marked
# pristine): configuring it in place saves initdb and a copy at every start.
MARK="$PGDATA/.poolstress-pristine"
fresh=""
if [ -e "$MARK" ]; then
    if [ "$POSTGRES_USER" = postgres ]; then
        fresh=pristine
    else
        find "$PGDATA" -mindepth 1 -delete # another superuser name: make a new cluster
    fi
fi
[ -s "$PGDATA/PG_VERSION" ] || fresh=initdb
if [ -n "$fresh" ]; then
    if [ -z "$AUTH" ]; then
        if [ -z "${POSTGRES_PASSWORD:-}" ]; then
            echo "Error: Database is uninitialized and superuser password is not specified." >&2
            echo "       Set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password." >&2
            exit 1
        fi
        AUTH=scram-sha-256
    fi
    if [ "$fresh" = pristine ]; then
        rm -f "$MARK"
        sed -i "s/^\(host.*\)trust\$/\1$AUTH/" "$PGDATA/pg_hba.conf"
        if [ "$AUTH" != trust ]; then
            pw=$(printf '%s' "${POSTGRES_PASSWORD:-}" | sed "s/'/''/g")
            printf "ALTER USER postgres PASSWORD '%s'\n" "$pw" | as_pg postgres --single -D "$PGDATA" postgres >/dev/null
        fi
    else
        pwfile=$(mktemp)
        printf '%s\n' "${POSTGRES_PASSWORD:-postgres}" >"$pwfile"
        chown postgres "$pwfile"
        as_pg initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
            --auth-local=trust --auth-host="$AUTH" --encoding=UTF8 --locale=C --no-sync >/tmp/initdb.log 2>&1 \
            || { cat /tmp/initdb.log >&2; exit 1; }
        rm -f "$pwfile"
    fi
    printf 'host all all all %s\n' "$AUTH" >>"$PGDATA/pg_hba.conf"
    scripts=$(ls /docker-entrypoint-initdb.d/*.sql /docker-entrypoint-initdb.d/*.sh 2>/dev/null || true)
    if [ "$POSTGRES_DB" != "postgres" ] || [ -n "$scripts" ]; then
        # Create the database and run init scripts on a server nobody else can reach,
        # logging to a file so its "ready" line is not mistaken for the real one.
        as_pg pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" \
            -l /tmp/postgres-init.log start >/dev/null
        psql() { command psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -q "$@"; }
        if [ "$POSTGRES_DB" != "postgres" ]; then
            psql -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
        fi
        for f in $scripts; do
            case "$f" in
                *.sql) psql -d "$POSTGRES_DB" -f "$f" ;;
                *.sh) . "$f" ;;
            esac
        done
        as_pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
fi

TLS="-c ssl_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem -c ssl_key_file=/etc/ssl/private/ssl-cert-snakeoil.key"
case "${POSTGRES_SSL:-off}" in on|1|true) TLS="$TLS -c ssl=on" ;; esac

# Not through as_pg: a function run with & is a subshell, and $! must be postgres itself.
# shellcheck disable=SC2086 # TLS is a list of arguments
setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql $TLS "$@" &
pg=$!
# docker stop (SIGTERM) and Ctrl-C: fast shutdown, like the official image's STOPSIGNAL SIGINT.
trap 'kill -INT "$pg" 2>/dev/null || true' INT TERM
(
    until pg_isready -q -h 127.0.0.1 -p 5432 -U "$POSTGRES_USER" -d postgres -t 1; do
        kill -0 "$pg" 2>/dev/null || exit 0
        sleep 0.05
    done
    msg="LOG:  database system is ready to accept connections"
    echo "$msg"
    echo "$msg" >&2
) &
status=0
while :; do
    wait "$pg" && status=0 || status=$?
    kill -0 "$pg" 2>/dev/null || break
done
exit "$status"
EOF
sed -i "s/@PG_MAJOR@/$PG_MAJOR/" "$WORK/postgres-entrypoint.sh"

cat >"$WORK/redis-entrypoint.sh" <<'EOF'
#!/bin/sh
# poolstress drop-in for the official redis image's entrypoint.
set -eu
if [ "${1:-}" = "redis-server" ]; then shift; fi
case "${1:-}" in
    ""|-*) ;;
    *) exec "$@" ;;
esac
mkdir -p /data && chown redis:redis /data
exec setpriv --reuid=redis --regid=redis --init-groups redis-server \
    --bind 0.0.0.0 --port 6379 --protected-mode no --save "" --appendonly no \
    --dir /data --daemonize no --logfile "" --supervised no "$@"
EOF
chmod 755 "$WORK/postgres-entrypoint.sh" "$WORK/redis-entrypoint.sh"

# --- builds ----------------------------------------------------------------

exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Docs, man pages and translations are not needed in a test server.
SLIM="--dpkgopt=path-exclude=/usr/share/doc/* --dpkgopt=path-include=/usr/share/doc/*/copyright \
--dpkgopt=path-exclude=/usr/share/man/* --dpkgopt=path-exclude=/usr/share/locale/* \
--dpkgopt=path-exclude=/usr/share/info/*"
SOURCES="deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main"

build() { # name include entrypoint port hook extra-changes...
    name=$1 include=$2 entry=$3 port=$4 hook=$5
    shift 5
    if exists "$name" && [ "$FORCE" = 0 ]; then
        echo "$name exists; skipping (--force rebuilds)"
        return 0
    fi
    echo "building $name from Debian $SUITE packages ($include)..."
    start=$(date +%s)
    # shellcheck disable=SC2086 # SLIM is a list of options
    mmdebstrap --quiet --variant=apt --include="$include" $SLIM \
        --customize-hook="copy-in $WORK/$entry /usr/local/bin/" \
        --customize-hook="$hook" \
        --customize-hook='rm -rf "$1"/var/lib/postgresql/*/main "$1"/etc/postgresql/*/main "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        "$SUITE" - "$SOURCES" \
        | docker import \
            -c "ENTRYPOINT [\"/usr/bin/tini\", \"--\", \"/usr/local/bin/$entry\"]" \
            -c "EXPOSE $port" \
            -c "ENV LANG=C.UTF-8" \
            "$@" \
            -m "poolstress local image from Debian $SUITE packages" - "$name" >/dev/null
    echo "$name built in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}'))"
}

if [ -z "$ONLY" ] || [ "$ONLY" = postgres ]; then
    # A pristine cluster (superuser postgres, trust) the entrypoint configures instead of running initdb.
    pristine='chroot "$1" setpriv --reuid=postgres --regid=postgres --init-groups '"/usr/lib/postgresql/$PG_MAJOR/bin/initdb"' \
        -D /var/lib/postgresql/data -U postgres --auth-local=trust --auth-host=trust -E UTF8 --locale=C --no-sync >/dev/null \
        && touch "$1"/var/lib/postgresql/data/.poolstress-pristine \
        || echo "warning: no pristine cluster in the image (initdb failed in the build chroot); containers run initdb" >&2'
    build "$PG_IMAGE" "postgresql-$PG_MAJOR,tini,ssl-cert" postgres-entrypoint.sh 5432 "$pristine" \
        -c "ENV PGDATA=/var/lib/postgresql/data"
fi
if [ -z "$ONLY" ] || [ "$ONLY" = redis ]; then
    build "$REDIS_IMAGE" "redis-server,tini" redis-entrypoint.sh 6379 true -c "WORKDIR /data"
fi
