# Shared set-up for the project's scripts: Debian packages, libvirtd, RabbitMQ, the virtualenv.
# Every step checks first and skips what is already done, so a second call starts fast.
# Sourced, not run: callers set -euo pipefail themselves.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${STORAGE_WORKER_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# scrub: libvirt runs it for every wipe algorithm but zero and trim. The storage driver for
# iscsi-direct pools, tgt (a user-space iSCSI target on loopback), parted (disk pools), xfsprogs (fs
# pools, reflink clones) and prometheus (promtool and the alert tests) serve the tests of pool types
# beyond directories and of the alert rules.
DEBIAN_PACKAGES=(libvirt-daemon-system libvirt-clients libvirt-dev pkg-config qemu-utils libxml2-utils
                 qemu-system-x86 scrub libvirt-daemon-driver-storage-iscsi-direct tgt parted xfsprogs
                 prometheus tmux)

say() { printf '[bootstrap] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing_packages() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || echo "$package"
    done
}

ensure_packages() {
    local missing
    missing=$(missing_packages "$@")
    [ -z "$missing" ] && return 0
    say "installing Debian packages: $(echo $missing)"
    # Another apt run (a second checkout bootstrapping, unattended upgrades) holds dpkg's lock for a
    # while: wait for it instead of failing.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends $missing >/dev/null
}

broker_answers() {
    "$PYTHON" - <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

ensure_rabbitmq() {
    broker_answers && return 0
    ensure_packages rabbitmq-server
    say "starting rabbitmq-server"
    as_root rabbitmq-server -detached
    as_root rabbitmqctl await_startup --timeout 120 >/dev/null
    broker_answers || { say "RabbitMQ did not come up on 127.0.0.1:5672"; return 1; }
}

libvirt_answers() {
    virsh -q -c qemu:///system uri >/dev/null 2>&1
}

# Without udev (a container) /dev/kvm stays root:root 0600. libvirt's qemu capability probe then
# records KVM as present while its cache check, made as the qemu user (libvirt-qemu, group kvm),
# finds it unusable: every domain lookup re-probes qemu, ~40 s for each define or start. Debian's
# udev rule gives the device to group kvm, mode 0660; do the same. Domains still use type='qemu'.
ensure_kvm_device_group() {
    [ -c /dev/kvm ] && getent group kvm >/dev/null || return 0
    [ "$(stat -c %G:%a /dev/kvm)" = kvm:660 ] && return 0
    say "giving /dev/kvm to group kvm, mode 0660, as udev would"
    as_root chgrp kvm /dev/kvm && as_root chmod 0660 /dev/kvm
}

# A libvirtd started before a storage driver package was installed has not loaded that backend: its
# pool capabilities say supported='no' for the type.
iscsi_direct_loaded() {
    # The output is read whole before it is searched: `virsh … | grep -q` under pipefail fails at
    # random (grep exits at the first match and virsh dies of SIGPIPE), which restarted libvirtd.
    local capabilities
    capabilities=$(virsh -q -c qemu:///system pool-capabilities 2>/dev/null) || return 1
    [[ "$capabilities" == *"type='iscsi-direct' supported='yes'"* ]]
}

start_libvirtd() {
    say "starting libvirtd"
    pgrep -x libvirtd >/dev/null || as_root libvirtd -d
    local i
    for i in $(seq 1 60); do
        libvirt_answers && return 0
        sleep 0.5
    done
    say "libvirtd did not answer on qemu:///system within 30 s"
    return 1
}

ensure_libvirtd() {
    ensure_packages "${DEBIAN_PACKAGES[@]}"
    as_root mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/images
    # virtlogd collects guest console logs; libvirt needs it to start a domain.
    pgrep -x virtlogd >/dev/null || as_root virtlogd -d
    ensure_kvm_device_group
    if libvirt_answers; then
        iscsi_direct_loaded && return 0
        say "restarting libvirtd to load the iscsi-direct storage backend"
        as_root pkill -TERM -x libvirtd || true
        local i
        for i in $(seq 1 60); do
            pgrep -x libvirtd >/dev/null || break
            sleep 0.5
        done
    fi
    start_libvirtd
}

ensure_venv() {
    local stamp="$VENV/.installed" want
    want=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtualenv $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing the project and its test dependencies into $VENV"
        local log="$VENV/pip-install.log"
        if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
               "$VENV/bin/python" -m pip install -e "$ROOT[test]"; } >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            say "pip install failed; the whole log is in $log"
            return 1
        fi
        echo "$want" > "$stamp"
    fi
}

# The official AsyncAPI 3.0.0 JSON Schema, which tests/unit/test_asyncapi.py validates
# docs/asyncapi.json against: taken from the npm package @asyncapi/specs (its bundled variant without
# $id, whose every $ref is local) into the venv. Not fatal: without it only that test fails (in CI)
# or skips (on a developer's machine).
ASYNCAPI_SPECS_VERSION=6.11.1
ASYNCAPI_DIR="$VENV/share/asyncapi"

ensure_asyncapi_schema() {
    local target="$ASYNCAPI_DIR/3.0.0.json" stamp="$ASYNCAPI_DIR/specs-version" tmp
    if [ -f "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$ASYNCAPI_SPECS_VERSION" ]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || ensure_packages npm || true
    if ! command -v npm >/dev/null 2>&1; then
        say "npm is missing: the AsyncAPI schema test will not find $target"
        return 0
    fi
    say "fetching the AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs@$ASYNCAPI_SPECS_VERSION)"
    tmp=$(mktemp -d)
    if (cd "$tmp" && npm pack --silent "@asyncapi/specs@$ASYNCAPI_SPECS_VERSION" >/dev/null 2>"$tmp/npm.log") &&
       tar -xzf "$tmp/asyncapi-specs-$ASYNCAPI_SPECS_VERSION.tgz" -C "$tmp" 'package/schemas/3.0.0-without-$id.json'; then
        mkdir -p "$ASYNCAPI_DIR"
        mv "$tmp/package/schemas/3.0.0-without-\$id.json" "$target"
        echo "$ASYNCAPI_SPECS_VERSION" > "$stamp"
    else
        tail -n 20 "$tmp/npm.log" >&2 2>/dev/null || true
        say "could not fetch @asyncapi/specs: the AsyncAPI schema test will not find $target"
    fi
    rm -rf "$tmp"
}

bootstrap() {
    ensure_libvirtd
    ensure_rabbitmq
    ensure_venv
    ensure_asyncapi_schema
}
