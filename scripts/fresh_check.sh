    # Processes left inside the chroot (an MPI daemon, a build) would keep its mounts busy;
    # three passes catch children started while the first pass ran.
    for _ in 1 2 3; do
      for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null || true
      done
      sleep 0.2
    done
#!/usr/bin/env bash
# Checks that the two README commands work on a fresh Debian 12 machine: for each command, a
# minimal Debian bookworm root (debootstrap --variant=minbase, from Debian's own archive) gets a
# clean `git archive` of a commit (HEAD by default), and the command runs inside it exactly as
# the README writes it. No CUDA there: the CPU build. Prints each command's wall time and last
# lines; exits non-zero when either fails.
#
# Usage (as root: it mounts and chroots):
#   scripts/fresh_check.sh                  # both commands, each in its own fresh root
#   scripts/fresh_check.sh --only test      # just scripts/test.sh (or --only quickstart)
#   scripts/fresh_check.sh --rev main~1     # another commit
#   scripts/fresh_check.sh --keep           # leave the roots in place to look around afterwards
# The base root is downloaded once and cached as a tarball (KVROUTE_FRESH_CACHE, default
# ~/.cache/kvroute); a later run starts from the cache. Full logs go to build/fresh_check/.
# Packages come from the Debian archive this machine's apt uses (its bookworm, bookworm-updates and
# bookworm-security entries); KVROUTE_DEBIAN_MIRROR=URL picks another mirror for all three.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

ONLY="" REV="HEAD" KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY="${2:?--only needs quickstart or test}"; shift 2 ;;
    --rev) REV="${2:?--rev needs a commit}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fresh_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$ONLY" in ""|quickstart|test) ;; *) echo "fresh_check: --only takes quickstart or test, not '$ONLY'" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "fresh_check: run as root (it mounts /proc, /sys and /dev into a chroot)" >&2; exit 2; }
# Resolved once: both roots get the same commit even if the branch moves meanwhile.
COMMIT=$(git -C "$REPO" rev-parse --verify -q "$REV^{commit}") || { echo "fresh_check: '$REV' is not a commit" >&2; exit 2; }

# The fresh root's apt sources: this machine's Debian entries for bookworm (main component).
host_sources() {
  apt-get indextargets --format '$(SITE) $(RELEASE)' 2>/dev/null |
    awk '$2 ~ /^bookworm(-updates|-security)?$/ {print "deb " $1 " " $2 " main"}' | sort -u
}
SOURCES=$(host_sources)
# indextargets lists only what apt has fetched: an apt that was never updated lists nothing.
[ -n "$SOURCES" ] || { apt-get update -qq; SOURCES=$(host_sources); }
if [ -n "${KVROUTE_DEBIAN_MIRROR:-}" ]; then
  m="${KVROUTE_DEBIAN_MIRROR%/}"
  SOURCES=$(printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main' "$m" "$m" "$m")
fi
MIRROR=$(awk '$3 == "bookworm" {print $2; exit}' <<< "$SOURCES")
[ -n "$MIRROR" ] || { echo "fresh_check: this machine's apt has no Debian bookworm source; set KVROUTE_DEBIAN_MIRROR=URL" >&2; exit 2; }
CACHE_DIR="${KVROUTE_FRESH_CACHE:-$HOME/.cache/kvroute}"
BASE_TAR="$CACHE_DIR/bookworm-minbase-$(dpkg --print-architecture).tar.gz"
LOG_DIR="$REPO/build/fresh_check"
mkdir -p "$CACHE_DIR" "$LOG_DIR"

# The tools this script itself needs on the host.
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -s /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
  echo "fresh_check: installing ${need[*]} on this machine"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Everything made below is undone on every exit path (error, Ctrl-C, normal end).
ROOTS=()
cleanup() {
  local root m
  for root in "${ROOTS[@]}"; do
    # Processes left inside the chroot (an MPI daemon, say) would keep its mounts busy.
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null || true
    done
    # Unmount deepest first.
    for m in $(awk -v r="$root" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "fresh_check: could not unmount $m" >&2
    done
    if [ "$KEEP" = 1 ]; then
      echo "fresh_check: kept $root (unmounted; remove it with rm -rf)"
    elif ! grep -q " $root" /proc/self/mounts; then
      rm -rf --one-file-system "$root"
    fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

if [ ! -s "$BASE_TAR" ]; then
  echo "fresh_check: building the base root (debootstrap --variant=minbase bookworm, $MIRROR)"
  t0=$(date +%s)
  base=$(mktemp -d /var/tmp/kvroute-base.XXXXXX)
  ROOTS+=("$base")
  debootstrap --variant=minbase bookworm "$base" "$MIRROR" > "$LOG_DIR/debootstrap.log" 2>&1 ||
    { tail -20 "$LOG_DIR/debootstrap.log" >&2; echo "fresh_check: debootstrap failed (log: $LOG_DIR/debootstrap.log)" >&2; exit 1; }
    # As on an installed Debian 12: updates and security next to the release.
  printf '%s\n' "$SOURCES" > "$base/etc/apt/sources.list"
  rm -rf "$base"/var/cache/apt/archives/*.deb "$base"/var/lib/apt/lists/*
  tar -C "$base" -czf "$BASE_TAR.partial" .
  mv "$BASE_TAR.partial" "$BASE_TAR"
  echo "fresh_check: cached $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1), $(( $(date +%s) - t0 )) s)"
else
  echo "fresh_check: base root from the cache, $BASE_TAR"
fi

# run_fresh NAME COMMAND: a new root from the cache, the source at /root/kvroute, COMMAND run
# there as root with a clean environment; RC[NAME] and SECS[NAME] get its exit code and wall time.
declare -A RC SECS
run_fresh() {
  local name="$1" cmd="$2" root log t0
  root=$(mktemp -d /var/tmp/kvroute-fresh-"$name".XXXXXX)
  ROOTS+=("$root")
  tar -C "$root" -xzf "$BASE_TAR"
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --bind /dev "$root/dev"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" 2>/dev/null || mount --bind /dev/pts "$root/dev/pts"
  mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  mkdir -p "$root/root/kvroute"
  git -C "$REPO" archive "$COMMIT" | tar -x -C "$root/root/kvroute"
  log="$LOG_DIR/$name.log"
  echo "fresh_check: [$name] $cmd   (in $root, log $log)"
  t0=$(date +%s)
  set +e
  # In the background, so that a stop signal reaches this script's trap at once (bash runs
  # traps only between foreground commands); cleanup then ends what runs in the root.
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb bash -c "cd /root/kvroute && $cmd" < /dev/null > "$log" 2>&1 &
  wait $!
  RC[$name]=$?
  set -e
  SECS[$name]=$(( $(date +%s) - t0 ))
  echo "fresh_check: [$name] exit ${RC[$name]} after ${SECS[$name]} s; its last lines:"
  tail -n 15 "$log" | sed 's/^/    /'
}

if [ "$ONLY" != test ]; then run_fresh quickstart "scripts/quickstart.sh"; fi
if [ "$ONLY" != quickstart ]; then run_fresh test "scripts/test.sh"; fi

echo
echo "fresh_check: summary (${COMMIT:0:12}, Debian bookworm minbase)"
status=0
for name in quickstart test; do
  [ -n "${RC[$name]:-}" ] || continue
  printf '  %-10s %s  %5d s (%.1f min)\n' "$name" "$([ "${RC[$name]}" = 0 ] && echo passed || echo "FAILED (exit ${RC[$name]})")" \
    "${SECS[$name]}" "$(awk -v s="${SECS[$name]}" 'BEGIN{print s/60}')"
  [ "${RC[$name]}" = 0 ] || status=1
done
exit $status
