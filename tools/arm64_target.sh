#!/usr/bin/env bash
# The target side on emulated AArch64 (Debian 12 arm64 under qemu-user), on artifacts exported on x86-64:
# for each CPU model (QEMU_CPU): doctor, verify --reference golden of every ONNX artifact, predict, a serve
# request, and the target tests; `.ci/run` calls it. Emulation proves what installs and what computes right
# on ARM's instructions; it measures nothing about ARM's speed.
#
# usage: tools/arm64_target.sh ARTIFACTS_DIR...   (folders of `resnet-deploy export`, golden outputs included;
#                                                  the first is the one tests/target run on)
#        tools/arm64_target.sh --prepare          (only the host tools, the root and its venv: .ci/run starts it
#                                                  in the background at the beginning; the checks wait for it)
# environment: RESNET_DEPLOY_ARM64_ROOT (the arm64 root, kept for the next run: /var/cache/resnet-deploy/arm64-root),
#   RESNET_DEPLOY_ARM64_CPUS (QEMU_CPU models: "max,sme=off cortex-a72": dotprod + i8mm + bf16 + SVE2, then plain
#   NEON; SME is off because OpenVINO computed wrong outputs on qemu 7.2's emulated SME, see the README),
#   RESNET_DEPLOY_ARM64_LIMIT (seconds for the whole step: 1200). Needs root (chroot, mounts, apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${RESNET_DEPLOY_ARM64_ROOT:-/var/cache/resnet-deploy/arm64-root}
CPUS=${RESNET_DEPLOY_ARM64_CPUS:-max,sme=off cortex-a72}
LIMIT=${RESNET_DEPLOY_ARM64_LIMIT:-1200}
MIRROR=http://deb.debian.org/debian
VENV=/opt/resnet-deploy  # inside the root
INSTALL=(-e '/src[serve,openvino]' 'pytest>=7.4' 'pytest-xdist>=3.6' 'hypothesis>=6.100')  # the target side, as the README installs it
PREPARE_ONLY=
[ "${1:-}" != --prepare ] || { PREPARE_ONLY=1; shift; }
[ $# -ge 1 ] || [ -n "$PREPARE_ONLY" ] || { echo "usage: $0 --prepare | ARTIFACTS_DIR..." >&2; exit 2; }
for folder in "$@"; do [ -d "$folder" ] || { echo "error: no folder $folder" >&2; exit 2; }; done
[ "$(id -u)" = 0 ] || { echo "error: needs root (chroot, mounts, apt-get)" >&2; exit 2; }
START=$SECONDS
if [ -z "${ARM64_STEP_BOUNDED:-}" ]; then  # the whole step under one deadline, whatever hangs under emulation
    ARM64_STEP_BOUNDED=1 exec timeout --kill-after=30 "$LIMIT" "$0" ${PREPARE_ONLY:+--prepare} "$@"
fi

host_tools() {  # debootstrap and qemu-user-static with its binfmt_misc entry (F: the interpreter is opened here)
    if ! command -v debootstrap >/dev/null || ! [ -x /usr/bin/qemu-aarch64-static ] || ! command -v update-binfmts >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static binfmt-support >/dev/null
    fi
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || { echo "error: qemu-aarch64's binfmt_misc entry lacks the F flag: a chroot cannot find its interpreter" >&2; exit 1; }
}

in_root() {  # in_root QEMU_CPU CPUINFO COMMAND...: COMMAND in the root, in its own mount namespace
    local cpu=$1 cpuinfo=$2; shift 2
    unshare --mount --propagation private bash -c '
        root=$1 cpuinfo=$2 cpu=$3; shift 3
        mount -t proc proc "$root/proc"
        if [ -n "$cpuinfo" ]; then
            mount --bind "$cpuinfo" "$root/proc/cpuinfo"
            mkdir -p "$root/sys/devices/system/cpu"
            mount --bind "$cpuinfo.sys" "$root/sys/devices/system/cpu"
        fi
        mount -t tmpfs tmpfs "$root/tmp"
        mkdir -p "$root/src" "$root/artifacts"
        mount --bind "$PWD" "$root/src"
        mount --bind "$ARTIFACTS_ALL/by-name" "$root/artifacts"
        exec env -i HOME=/root PATH='"$VENV"'/bin:/usr/bin:/bin LANG=C.UTF-8 QEMU_CPU="$cpu" \
            PIP_CERT=/etc/ssl/host-ca.crt SSL_CERT_FILE=/etc/ssl/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
            PIP_DEFAULT_TIMEOUT=180 "$(command -v chroot)" "$root" "$@"' _ "$ROOT" "$cpuinfo" "$cpu" "$@"
}

make_root() {  # the Debian arm64 root with the package's venv ([serve] and openvino), kept at $ROOT
    if [ ! -e "$ROOT/.complete" ]; then
        rm -rf "$ROOT" "$ROOT.partial"
        mkdir -p "$(dirname "$ROOT")"
        debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
            "$ROOT.partial" "$MIRROR" >/dev/null
        mv "$ROOT.partial" "$ROOT"
        touch "$ROOT/.complete"
    fi
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/host-ca.crt"  # this network's CA, as the host trusts it
    local wanted installed
    wanted=$( (cat pyproject.toml; echo "${INSTALL[@]}") | sha256sum | cut -c1-16)
    installed=$(cat "$ROOT$VENV/.installed" 2>/dev/null || true)
    if [ "$wanted" != "$installed" ]; then
        rm -rf "${ROOT:?}$VENV"
        in_root max "" python3 -m venv "$VENV"
        in_root max "" "$VENV/bin/pip" install --quiet "${INSTALL[@]}"
        echo "$wanted" > "$ROOT$VENV/.installed"
    fi
}

step() { printf '== arm64 %s (%ss)\n' "$*" $((SECONDS - START)); }
ARTIFACTS_ALL=$(mktemp -d)
trap 'rm -rf "$ARTIFACTS_ALL"' EXIT
export ARTIFACTS_ALL
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"  # one run at a time builds or uses the root
flock 9
mkdir "$ARTIFACTS_ALL/by-name"
for folder in "$@"; do cp -r "$folder" "$ARTIFACTS_ALL/by-name/$(basename "$folder")"; done
step "host tools"; host_tools
step "root at $ROOT"; make_root
if [ -n "$PREPARE_ONLY" ]; then step "prepared"; exit 0; fi
failed=0
for cpu in $CPUS; do
    step "QEMU_CPU=$cpu: its cpuinfo"
    cpuinfo=$ARTIFACTS_ALL/by-name/cpuinfo-$cpu
    in_root "$cpu" "" python3 - < tools/arm64_cpuinfo.py > "$cpuinfo"
    mkdir -p "$cpuinfo.sys"
    in_root "$cpu" "" python3 - --sysfs "/artifacts/cpuinfo-$cpu.sys" < tools/arm64_cpuinfo.py
    mv "$cpuinfo" "$cpuinfo.sys" "$ARTIFACTS_ALL"
    cpuinfo=$ARTIFACTS_ALL/cpuinfo-$cpu
    grep -m1 '^Features' "$cpuinfo"
    step "QEMU_CPU=$cpu: doctor, verify, predict on OpenVINO, tests/target"
    in_root "$cpu" "$cpuinfo" bash /src/tools/arm64_checks.sh "$(basename "$1")" || failed=1
done
step "done: verify per CPU model and file"
cat "$ARTIFACTS_ALL/by-name/verdicts" 2>/dev/null || echo "no verdicts"
exit $failed
