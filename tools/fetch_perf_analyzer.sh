#!/usr/bin/env bash
# Make Triton's load tool perf_analyzer runnable on this machine without changing the system.
#
# Why: the perf-analyzer 2.60.0 wheel is built for glibc >= 2.38; Debian 12 has 2.36, so pip offers only
# an empty placeholder. This script downloads the real wheel, unzips it, downloads libc6, libstdc++6 and
# libgcc-s1 of Debian trixie with a PRIVATE apt state (sources, lists, status, cache and config parts all
# inside FOLDER, so no system hook runs and no system file changes), unpacks them into FOLDER with
# dpkg-deb -x, and writes FOLDER/perf_analyzer: a wrapper that starts the binary with trixie's dynamic
# loader and libraries (the system's libssl, libcrypto and libz come from /lib/x86_64-linux-gnu).
#
# Usage: tools/fetch_perf_analyzer.sh [FOLDER]   (default: ~/.cache/resnet-deploy/perf_analyzer)
# Idempotent: steps already done are skipped; the wrapper is checked with --version at the end.
# Needs: a python3 with pip, and apt-get, dpkg-deb, gpgv (Debian's base). No root needed.
# Environment: PYTHON (default python3), MIRROR (default: the system's Debian mirror), SUITE (default trixie).
set -uo pipefail

VERSION=2.60.0
PACKAGES=(libc6 libstdc++6 libgcc-s1)
SUITE=${SUITE:-trixie}
PYTHON=${PYTHON:-python3}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

die() { echo "fetch_perf_analyzer: error: $*" >&2; exit 1; }

case "${1:-}" in
  -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ $# -le 1 ] || die "one argument at most (the folder), got $#"

FOLDER=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-deploy/perf_analyzer}
mkdir -p "$FOLDER" 2>/dev/null || die "cannot create $FOLDER"
FOLDER=$(cd "$FOLDER" && pwd -P) || die "cannot enter $FOLDER"
LOG=$FOLDER/fetch.log
: >"$LOG" 2>/dev/null || die "cannot write in $FOLDER"

# step NAME CMD...: run CMD with its output in the log; on failure, one line with its last line.
step() {
  local name=$1; shift
  local out=$FOLDER/.step.out status=0
  echo "== $name: $*" >>"$LOG"
  "$@" >"$out" 2>&1 || status=$?
  cat "$out" >>"$LOG"
  if [ "$status" != 0 ]; then
    local why  # the first apt/pip error line, else the last line
    why=$(grep -m1 -E '^(E|W): |^ERROR: |[Ee]rror' "$out" || grep -v '^\s*$' "$out" | tail -n 1)
    rm -f "$out"
    die "$name failed: ${why:-no output} (log: $LOG)"
  fi
  rm -f "$out"
}

for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || die "$tool not found (this script needs a Debian-based system)"
done
[ -r "$KEYRING" ] || die "$KEYRING not found (package debian-archive-keyring)"

# 1. The wheel, unzipped into FOLDER/wheel (pip's own cache untouched: --no-cache-dir).
BINARY=$FOLDER/wheel/perf_analyzer/bin/perf_analyzer
if [ ! -x "$BINARY" ]; then
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON -m pip not available (set PYTHON=/path/to/python)"
  rm -rf "$FOLDER/download" "$FOLDER/wheel"
  step "pip download" "$PYTHON" -m pip download --disable-pip-version-check --no-cache-dir --no-deps \
    --only-binary :all: --platform manylinux_2_38_x86_64 --python-version 3.11 \
    "perf_analyzer==$VERSION" -d "$FOLDER/download"
  wheels=("$FOLDER"/download/perf_analyzer-"$VERSION"-*.whl)
  [ -f "${wheels[0]}" ] || die "pip download left no perf_analyzer-$VERSION wheel in $FOLDER/download"
  step "unzip wheel" "$PYTHON" -m zipfile -e "${wheels[0]}" "$FOLDER/wheel"
  [ -f "$BINARY" ] || die "the wheel holds no perf_analyzer/bin/perf_analyzer"
  chmod +x "$BINARY"
fi

# 2. trixie's libc6, libstdc++6, libgcc-s1 with a private apt state, unpacked into FOLDER.
LIBDIR=$FOLDER/usr/lib/x86_64-linux-gnu
if [ ! -f "$FOLDER/.libraries-$SUITE" ]; then
  if [ -z "${MIRROR:-}" ]; then
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    # The system's own Debian mirror (read-only query of its configuration).
    MIRROR=$(apt-get indextargets --format '$(LABEL) $(CODENAME) $(REPO_URI)' 2>/dev/null \
             | awk -v c="$codename" '$1 == "Debian" && $2 == c {print $3; exit}')
    if [ -z "$MIRROR" ]; then  # no lists downloaded yet: read the sources themselves
      MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
               | awk -v c="$codename" '$1 == "deb" {for (i = 2; i < NF; i++)
                                             if ($i ~ /^[a-z]+:\/\// && $(i+1) == c) {print $i; exit}}')
    fi
    if [ -z "$MIRROR" ]; then
      MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
               | awk -v c="$codename" 'BEGIN {RS=""} $0 ~ "(^|\n)Suites:[^\n]*[ \t]" c "([ \t]|\n|$)" {
                   if (match($0, /URIs:[ \t]*[^ \t\n]+/)) {
                     split(substr($0, RSTART, RLENGTH), f, /[ \t]+/); print f[2]; exit}}')
    fi
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
  fi
  MIRROR=${MIRROR%/}
  APT=$FOLDER/apt
  rm -rf "$APT" "$FOLDER/debs"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/empty" "$FOLDER/debs"
  : >"$APT/status"
  echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$APT/sources.list"
  # Read before any -o option: keeps the system's apt.conf.d (and its update hooks) out.
  printf 'Dir::Etc::parts "%s";\nDir::Etc::main "%s";\n' "$APT/empty" "$APT/empty/apt.conf" >"$APT/apt.conf"
  options=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=$APT/empty"
           -o "Dir::State::Lists=$APT/lists" -o "Dir::State::status=$APT/status" -o "Dir::Cache=$APT/cache"
           -o "Dir::Etc::preferences=$APT/empty/preferences" -o "Dir::Etc::preferencesparts=$APT/empty"
           -o "Dir::Etc::trustedparts=$APT/empty" -o "Dir::Etc::trusted=$APT/empty/trusted.gpg"
           -o "Debug::NoLocking=true" -o "Acquire::Languages=none")
  # The system's proxy, if it sets one (its config parts are not read here).
  for key in Acquire::http::Proxy Acquire::https::Proxy; do
    value=$(apt-config shell V "$key" 2>/dev/null | sed -n "s/^V='\(.*\)'$/\1/p")
    [ -n "$value" ] && options+=(-o "$key=$value")
  done
  # As root apt would hand downloads to _apt, who cannot write in a private folder under /root.
  [ "$(id -u)" = 0 ] && options+=(-o "APT::Sandbox::User=root")
  export APT_CONFIG=$APT/apt.conf
  step "apt-get update ($MIRROR $SUITE)" apt-get -q --error-on=any "${options[@]}" update
  step "apt-get download" bash -c 'cd "$1" && shift && apt-get -q "$@"' _ "$FOLDER/debs" "${options[@]}" \
    download "${PACKAGES[@]}"
  unset APT_CONFIG
  for package in "${PACKAGES[@]}"; do
    debs=("$FOLDER"/debs/"$package"_*.deb)
    [ -f "${debs[0]}" ] || die "apt-get download left no $package .deb in $FOLDER/debs"
    step "dpkg-deb -x $(basename "${debs[0]}")" dpkg-deb -x "${debs[0]}" "$FOLDER"
  done
  [ -x "$LIBDIR/ld-linux-x86-64.so.2" ] || die "no $LIBDIR/ld-linux-x86-64.so.2 after unpacking libc6"
  rm -rf "$APT/lists" "$APT/cache"  # about 130 MB of trixie's package lists, no longer needed
  touch "$FOLDER/.libraries-$SUITE"
fi

# 3. The wrapper (always rewritten: cheap, and it follows the folder's path).
WRAPPER=$FOLDER/perf_analyzer
q() { printf '%q' "$1"; }
cat >"$WRAPPER.tmp" <<EOF || die "cannot write $WRAPPER"
#!/bin/sh
# perf_analyzer $VERSION with Debian $SUITE's glibc and libstdc++ (written by tools/fetch_perf_analyzer.sh).
GCONV_PATH=$(q "$LIBDIR/gconv"); export GCONV_PATH
exec $(q "$LIBDIR/ld-linux-x86-64.so.2") --library-path $(q "$LIBDIR:/lib/x86_64-linux-gnu") $(q "$BINARY") "\$@"
EOF
chmod +x "$WRAPPER.tmp" && mv -f "$WRAPPER.tmp" "$WRAPPER" || die "cannot write $WRAPPER"

# 4. Check it runs.
if ! version=$("$WRAPPER" --version 2>&1) || [ -z "$version" ]; then
  die "$WRAPPER --version failed: $(echo "$version" | grep -v '^\s*$' | tail -n 1)"
fi
echo "$WRAPPER"
echo "$version" | head -n 3 >&2
