#!/usr/bin/env bash
# The booted-systemd test: installs the Debian package of unrooted into a Debian 12
# container booted with systemd as PID 1 (systemd-nspawn --boot) and checks what
# docs/install.md promises, with real units, sockets and mounts: socket activation, the
# daemon's identity, the read-only store, doctor, builds as another user in id slices,
# garbage collection across private homes, a broken roots helper, a reboot, removal;
# then, in a second container, a root nix-daemon's store migrated to unrooted.
#
#   scripts/systemd-test.sh [--deb PATH] [--keep]
#
# Needs root, debootstrap and systemd-nspawn (systemd-container). The Debian 12 root
# is made once with debootstrap (network: deb.debian.org) and cached in
# $UNROOTED_CI_CACHE (default /var/cache/unrooted-ci/bookworm); every run boots fresh
# overlays of it under /var/tmp, removed at the end (--keep keeps them). Without
# --deb the package is built first (scripts/package.sh).
#
# One PASS or FAIL line per check; exits non-zero when any check failed. Under
# CI=true a missing prerequisite is a failure; otherwise the test says "skipped" and
# exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."

deb= keep=false
while [ $# -gt 0 ]; do
  case "$1" in
  --deb) deb=$(realpath "$2"); shift 2 ;;
  --keep) keep=true; shift ;;
  -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
failures=0 passes=0
pass() { passes=$((passes + 1)); echo "PASS: $*"; }
fail() { failures=$((failures + 1)); echo "FAIL: $*"; }
note() { echo "---- $* ($(($(date +%s) - started)) s)"; }

skip_or_fail() {
  if [ "${CI:-}" = true ]; then
    echo "FAIL: prerequisite: $*"
    exit 1
  fi
  echo "systemd-test: skipped ($*)"
  exit 0
}

if [ "$(id -u)" != 0 ]; then
  # Build the package as the caller (cargo is theirs), boot containers as root.
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    [ -n "$deb" ] || deb=$(scripts/package.sh | tail -1) || { echo "FAIL: building the package"; exit 1; }
    exec sudo -n CI="${CI:-}" UNROOTED_CI_CACHE="${UNROOTED_CI_CACHE:-}" "$0" --deb "$deb" $($keep && echo --keep)
  fi
  skip_or_fail "needs root, or sudo without a password (it boots containers)"
fi
for tool in debootstrap systemd-nspawn nsenter mount; do
  command -v "$tool" >/dev/null || skip_or_fail "$tool missing: apt-get install debootstrap systemd-container"
done
[ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo 0)" != 0 ] ||
  skip_or_fail "user namespaces are off (user.max_user_namespaces = 0)"

# ---------------------------------------------------------------------------------
# The cached Debian 12 root.
cache=${UNROOTED_CI_CACHE:-}
cache=${cache:-/var/cache/unrooted-ci}
base=$cache/bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What is in the base; a change here makes the next run rebuild it.
recipe="v1 bookworm minbase+systemd,systemd-sysv,dbus; apt: nix-bin uidmap busybox-static libpam-systemd; downloaded: nix-setup-systemd"
base_packages=(nix-bin uidmap busybox-static libpam-systemd)

make_base() {
  local new=$cache/bookworm.new
  rm -rf "$new"
  note "making the Debian 12 base in $base (debootstrap, once)"
  # debootstrap resolves no virtual packages (nix-bin needs perl-dbdabi-94): the base
  # system with systemd first, then apt for the rest.
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$new" "$mirror" \
    > "$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log"; return 1; }
  local in_new=(systemd-nspawn --quiet --register=no --keep-unit --private-users=no -D "$new"
                env DEBIAN_FRONTEND=noninteractive)
  {
    "${in_new[@]}" apt-get update -qq &&
      "${in_new[@]}" apt-get install -y -qq --no-install-recommends "${base_packages[@]}" &&
      # The migration scenario installs Debian's root nix-daemon from the cache, offline.
      "${in_new[@]}" apt-get install -y -qq --download-only nix-setup-systemd
  } > "$cache/apt.log" 2>&1 || { tail -20 "$cache/apt.log"; return 1; }
  # No login prompt on the console, no network configuration to wait for.
  echo unrooted-ci > "$new/etc/hostname"
  ln -sf /dev/null "$new/etc/systemd/system/console-getty.service"
  echo "$recipe" > "$new/.unrooted-base"
  rm -rf "$base" && mv "$new" "$base"
}

mkdir -p "$cache"
exec 9> "$cache/lock"
flock 9
if [ "$(cat "$base/.unrooted-base" 2>/dev/null)" != "$recipe" ]; then
  make_base || { fail "prerequisite: making the Debian 12 base"; exit 1; }
else
  note "reusing the cached Debian 12 base $base"
fi
flock -u 9

if [ -z "$deb" ]; then
  note "building the package (scripts/package.sh)"
  deb=$(scripts/package.sh | tail -1) || { fail "building the package"; exit 1; }
fi
[ -f "$deb" ] || { fail "no package at $deb"; exit 1; }
note "package $deb"

# ---------------------------------------------------------------------------------
# Containers: a fresh overlay of the base each, booted with systemd as PID 1.
scratch=$(mktemp -d /var/tmp/unrooted-systemd-test.XXXXXX)
chmod 755 "$scratch"
nspawn_pid= leader=

cleanup() {
  stop_container || true
  for m in "$scratch"/*/root; do mountpoint -q "$m" && umount -l "$m"; done
  if $keep; then echo "kept $scratch"; else rm -rf "$scratch"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# new_root NAME: an overlay of the base at $scratch/NAME/root.
new_root() {
  local d=$scratch/$1
  mkdir -p "$d/upper" "$d/work" "$d/root"
  mount -t overlay overlay -o "lowerdir=$base,upperdir=$d/upper,workdir=$d/work" "$d/root"
}

# boot NAME: boots $scratch/NAME/root and waits for systemd to finish starting up.
boot() {
  local name=$1 root=$scratch/$1/root
  systemd-nspawn --boot --register=no --keep-unit --private-users=no --console=read-only \
    -M "$name" -D "$root" >> "$scratch/$name/console.log" 2>&1 &
  nspawn_pid=$!
  leader=
  for _ in $(seq 300); do
    leader=$(pgrep -P "$nspawn_pid" | head -1)
    [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
    leader=
    sleep 0.1
  done
  [ -n "$leader" ] || { tail -30 "$scratch/$name/console.log"; return 1; }
  local state
  for _ in $(seq 120); do
    state=$(inside systemctl is-system-running 2>/dev/null)
    case "$state" in running|degraded) break ;; esac
    sleep 1
  done
  if [ "$state" = degraded ]; then
    echo "     (degraded: $(inside systemctl --failed --plain --no-legend | cut -d' ' -f1 | tr '\n' ' '))"
  fi
  case "$state" in running|degraded) return 0 ;; esac
  echo "     system state: $state"; tail -30 "$scratch/$name/console.log"
  return 1
}

stop_container() {
  [ -n "$nspawn_pid" ] || return 0
  if kill -0 "$nspawn_pid" 2>/dev/null; then
    inside systemctl poweroff >/dev/null 2>&1 || kill -RTMIN+4 "$leader" 2>/dev/null
    for _ in $(seq 600); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$nspawn_pid" 2>/dev/null && kill -KILL "$nspawn_pid"
  fi
  wait "$nspawn_pid" 2>/dev/null
  nspawn_pid= leader=
}

# inside CMD...: runs CMD as root in the container (all of PID 1's namespaces).
inside() {
  nsenter -t "$leader" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}
# as USER SCRIPT: runs the shell SCRIPT as USER in the container, in the user's home,
# with nothing of the daemon's configuration in the environment (nix.conf says
# `store = daemon`).
as() {
  local user=$1; shift
  inside setpriv --reuid="$user" --regid="$user" --init-groups --inh-caps=-all \
    env HOME="/home/$user" USER="$user" sh -c "cd && $1"
}

# doctor: `unrooted doctor` inside, its verdicts shown either way.
doctor() {
  local out rc
  out=$(inside unrooted doctor 2>&1); rc=$?
  printf '%s\n' "$out" | sed 's/^/     | /' >&3
  [ $rc = 0 ] && printf '%s\n' "$out" | grep -q '(0 warning(s))'
}
exec 3>&1

# check NAME CMD...: PASS when CMD succeeds, else FAIL with its output.
check() {
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name"
    printf '%s\n' "$out" | tail -25 | sed 's/^/     | /'
  fi
}
# check_not NAME CMD...: PASS when CMD fails.
check_not() {
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then
    fail "$name"
    printf '%s\n' "$out" | tail -25 | sed 's/^/     | /'
  else
    pass "$name"
  fi
}

# The derivations: builder /bin/sh is the static busybox, bound in through sandbox-paths.
trivial_nix='derivation { name = "trivial"; system = "x86_64-linux"; builder = "/bin/sh";
  args = [ "-c" "echo hello from $(id -u) > $out" ]; salt = "SALT"; }'
slow_nix='derivation { name = "slow"; system = "x86_64-linux"; builder = "/bin/sh";
  args = [ "-c" "sleep 6; echo slow > $out" ]; salt = "SALT"; }'

add_users() {
  inside sh -ec "for u in $*; do useradd --create-home --shell /bin/sh \$u; chmod 0700 /home/\$u; done"
}

install_deb() {
  cp "$deb" "$scratch/$1/root/root/"
  # (apt 2.6 cannot take a local .deb with --no-download; its dependencies are all
  # in the base, so nothing is downloaded.)
  inside apt-get install -y "/root/$(basename "$deb")"
}

daemon_pid() { inside systemctl show -p MainPID --value unrooted-daemon.service; }

store_owner_uid() { inside id -u unrooted; }

# ---------------------------------------------------------------------------------
note "container 1: a fresh Debian 12, the package installed"
new_root fresh || { fail "overlay of the base"; exit 1; }
root1=$scratch/fresh/root
# Builders get Debian's static busybox as /bin/sh; no binary caches.
mkdir -p "$root1/etc/nix"
printf 'sandbox-paths = /bin/sh=/bin/busybox\nsubstituters =\n' >> "$root1/etc/nix/nix.conf"
if ! boot fresh; then fail "container 1 boots with systemd as PID 1"; exit 1; fi
pass "container 1 boots with systemd as PID 1 (pid $leader on the host)"
add_users alice bob

check "apt install ./$(basename "$deb") (postinst: unrooted install --enable)" install_deb fresh
check "unrooted-store.service active" inside systemctl is-active unrooted-store.service
check "unrooted-daemon.socket active" inside systemctl is-active unrooted-daemon.socket
check "unrooted-find-roots.socket active" inside systemctl is-active unrooted-find-roots.socket
check "units enabled" inside systemctl is-enabled unrooted-store.service unrooted-daemon.socket unrooted-find-roots.socket
check_not "daemon not started before a client connects" inside systemctl is-active unrooted-daemon.service
check "first client (nix store ping as alice) connects" \
  as alice "nix --extra-experimental-features nix-command store ping"
check "socket activation started unrooted-daemon.service" inside systemctl is-active unrooted-daemon.service

check_daemon_identity() {
  local pid uid owner caps
  pid=$(daemon_pid); owner=$(store_owner_uid)
  [ -n "$pid" ] && [ "$pid" != 0 ] || { echo "no MainPID"; return 1; }
  uid=$(inside awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
  caps=$(inside awk '/^Cap(Eff|Prm|Amb):/ {print $1 $2}' "/proc/$pid/status" | tr '\n' ' ')
  echo "pid $pid uids $uid caps $caps (store owner uid $owner)"
  [ "$uid" = "$owner $owner $owner $owner" ] && [ "$owner" != 0 ] &&
    echo "$caps" | grep -q 'CapEff:0000000000000000' &&
    echo "$caps" | grep -q 'CapPrm:0000000000000000'
}
check "daemon runs as the store owner (not root), CapEff and CapPrm 0" check_daemon_identity

check_store_ro() {
  inside findmnt -no OPTIONS /nix/store | grep -qw ro || { inside findmnt /nix/store; return 1; }
  if inside touch /nix/store/probe-root 2>&1; then echo "root could write the store"; return 1; fi
  if as alice "touch /nix/store/probe-alice" 2>&1; then echo "alice could write the store"; return 1; fi
  # The store owner outside the daemon's namespace, too.
  if inside setpriv --reuid=unrooted --regid=unrooted --init-groups touch /nix/store/probe-owner 2>&1; then
    echo "the store owner outside the daemon could write the store"; return 1
  fi
  return 0
}
check "store read-only for root, users and the owner outside the daemon (touch fails)" check_store_ro
check_store_rw_for_daemon() {
  local pid; pid=$(daemon_pid)
  inside nsenter -t "$pid" -m setpriv --reuid=unrooted --regid=unrooted --init-groups \
    sh -c 'touch /nix/store/.probe-daemon && rm /nix/store/.probe-daemon'
}
check "store writable in the daemon's mount namespace (as the store owner)" check_store_rw_for_daemon
check "unrooted doctor exits 0 without warnings" doctor

build_as_alice() {
  as alice "printf '%s\n' '${trivial_nix//SALT/$1}' > t.nix && nix-build t.nix -o ~/result && cat ~/result"
}
check "alice: nix-build -o ~/result (0700 home) through the daemon" build_as_alice one
journal_id_range() {
  inside journalctl -u unrooted-daemon.service --no-pager | grep -m1 'id-range mode'
}
check "builds in the id-range mode (daemon's journal)" journal_id_range

# A builder caught running: its uid outside the sandbox is in the owner's subordinate range.
check_builder_uid() {
  local start count
  read -r start count < <(inside awk -F: '$1 == "unrooted" {print $2, $3}' /etc/subuid)
  as alice "printf '%s\n' '${slow_nix//SALT/$(date +%s%N)}' > s.nix && nix-build s.nix --no-out-link" > "$scratch/slow.log" 2>&1 &
  local bpid=$! seen=
  for _ in $(seq 80); do
    seen=$(inside sh -c 'for s in /proc/[0-9]*/status; do awk -v s="$s" "/^Uid:/ {print \$2, s}" "$s"; done 2>/dev/null' |
      awk -v a="$start" -v n="$count" '$1 >= a && $1 < a + n {print; exit}')
    [ -n "$seen" ] && break
    sleep 0.1
  done
  wait "$bpid"; local rc=$?
  cat "$scratch/slow.log"
  echo "subordinate range $start+$count; process seen: ${seen:-none}"
  [ $rc = 0 ] && [ -n "$seen" ]
}
check "a builder runs under a slice uid of the owner's subordinate range (not the owner)" check_builder_uid

result_target() { as alice "readlink ~/result"; }
gc_keeps_result() {
  local target dead
  target=$(result_target) || return 1
  # Something dead, so the collection has work to do.
  dead=$(as bob "echo dead-\$(date +%s%N) > dead && nix-store --add dead") || return 1
  as bob "nix-collect-garbage" || return 1
  echo "result: $target; dead: $dead"
  as alice "nix-store -q --hash $target && cat ~/result" || return 1
  if inside test -e "$dead"; then echo "$dead survived"; return 1; fi
}
check "bob: nix-collect-garbage deletes dead paths, keeps alice's ~/result target" gc_keeps_result

gc_fails_closed() {
  local dead out
  dead=$(as bob "echo dead-\$(date +%s%N) > dead && nix-store --add dead") || return 1
  inside systemctl stop unrooted-find-roots.socket || return 1
  if out=$(as bob "nix-collect-garbage" 2>&1); then
    echo "$out"; echo "GC succeeded without the roots helper"; inside systemctl start unrooted-find-roots.socket; return 1
  fi
  echo "$out" | tail -3
  inside systemctl start unrooted-find-roots.socket
  inside test -e "$dead" || { echo "$dead was deleted"; return 1; }
  inside test -e "$(result_target)" || { echo "alice's result was deleted"; return 1; }
}
check "roots helper stopped: nix-collect-garbage fails and deletes nothing" gc_fails_closed
check "roots helper back: nix-collect-garbage works again" as bob "nix-collect-garbage"

note "container 1: reboot"
stop_container
if boot fresh; then pass "container 1 boots again"; else fail "container 1 boots again"; exit 1; fi
check "after reboot: units active" inside systemctl is-active unrooted-store.service unrooted-daemon.socket unrooted-find-roots.socket
check "after reboot: store read-only" check_store_ro
check "after reboot: alice's ~/result still valid" as alice 'nix-store -q --hash "$(readlink ~/result)"'
check "after reboot: alice builds again" build_as_alice two
check "after reboot: daemon identity" check_daemon_identity
check "after reboot: store writable for the daemon" check_store_rw_for_daemon
check "after reboot: unrooted doctor exits 0 without warnings" doctor
restart_and_build() {
  inside systemctl restart unrooted-daemon.service && build_as_alice three
}
check "after reboot: daemon restart keeps the writable view (systemctl restart)" restart_and_build

upgrade_restarts_daemon() {
  local before after
  before=$(daemon_pid)
  cp "$deb" "$scratch/fresh/root/root/" && inside apt-get install -y --reinstall "/root/$(basename "$deb")" || return 1
  after=$(daemon_pid)
  echo "daemon pid before $before, after $after"
  [ "$before" != "$after" ] && [ "$after" != 0 ] && build_as_alice upgraded
}
check "apt install --reinstall (an upgrade): the running daemon restarts, builds work" upgrade_restarts_daemon

remove_keeps_store() {
  local target; target=$(result_target) || return 1
  inside apt-get remove -y unrooted || return 1
  for u in unrooted-store.service unrooted-daemon.socket unrooted-daemon.service unrooted-find-roots.socket; do
    if inside test -e "/etc/systemd/system/$u"; then echo "$u still installed"; return 1; fi
  done
  if inside test -e /usr/local/libexec/unrooted/unrooted; then echo "daemon binary still there"; return 1; fi
  if inside grep -q 'BEGIN unrooted' /etc/nix/nix.conf; then echo "nix.conf block still there"; return 1; fi
  if inside findmnt /nix/store >/dev/null; then echo "store still mounted read-only"; inside findmnt /nix/store; return 1; fi
  inside test -e "$target" || { echo "$target gone"; return 1; }
  inside test -e /nix/var/nix/db/db.sqlite || { echo "database gone"; return 1; }
  inside id unrooted
}
check "apt remove unrooted: units, binaries, mounts and nix.conf block gone; store, database, owner kept" remove_keeps_store
purge_keeps_store() {
  local target; target=$(result_target) || return 1
  inside apt-get purge -y unrooted && inside test -e "$target"
}
check "apt purge unrooted keeps the store" purge_keeps_store
reinstall_doctor() { install_deb fresh && doctor; }
check "reinstall on the kept store: doctor exits 0 without warnings" reinstall_doctor
check "reinstall: alice's ~/result still valid" as alice 'nix-store -q --hash "$(readlink ~/result)"'
stop_container

# ---------------------------------------------------------------------------------
note "container 2: Debian's root nix-daemon first, then the package and unrooted migrate"
new_root migrate || { fail "overlay of the base"; exit 1; }
root2=$scratch/migrate/root
if ! boot migrate; then fail "container 2 boots"; exit 1; fi
pass "container 2 boots with systemd as PID 1"
add_users alice bob
# (Its postinst starts nix-daemon.service, whose socket unit then refuses to start.)
check "Debian's root nix-daemon installed and running (nix-setup-systemd, from the cache)" \
  inside sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y --no-download nix-setup-systemd && systemctl is-active nix-daemon.service'
# Debian's nix-daemon serves the members of nix-users only.
inside adduser --quiet alice nix-users
inside sh -c 'printf "substituters =\nsandbox-paths = /bin/sh=/bin/busybox\n" >> /etc/nix/nix.conf'
old_paths=$scratch/migrate/old-paths
root_build() {
  as alice "printf '%s\n' '${trivial_nix//SALT/old}' > t.nix && nix-build t.nix -o ~/result && nix-env -i \$(readlink ~/result) && nix-env -q" || return 1
  # Owned by root, built by a nixbld user.
  inside stat -c '%U %n' /nix/store "$(as alice 'readlink ~/result')"
  inside sh -c 'for p in /proc/[0-9]*/comm; do grep -qx nix-daemon $p && exit 0; done; exit 1'
}
check "alice builds and installs into her profile through the root nix-daemon" root_build
as alice 'nix-store -qR "$(readlink ~/result)" ~/.nix-profile/' 2>/dev/null | sort -u > "$old_paths.list"
as alice 'nix-store -q --hash $(nix-store -qR "$(readlink ~/result)" ~/.nix-profile/ | sort -u)' > "$old_paths.hashes" 2>/dev/null
echo "     ($(wc -l < "$old_paths.list") old paths recorded)"

install_over_root() {
  install_deb migrate || return 1
  if inside systemctl is-enabled unrooted-store.service; then echo "enabled over a root nix-daemon's store"; return 1; fi
}
check "apt install of the package over a root nix-daemon's store: units not enabled yet" install_over_root
check "nix-daemon still serves (the store is left alone until migrate)" as alice 'nix-store -q --hash "$(readlink ~/result)"'
migrate_steps() {
  inside systemctl disable --now nix-daemon.socket nix-daemon.service &&
    inside unrooted migrate --store-owner unrooted &&
    inside unrooted install --enable
}
check "disable nix-daemon; unrooted migrate --store-owner unrooted; unrooted install --enable" migrate_steps
check "after migrate: units active" inside systemctl is-active unrooted-store.service unrooted-daemon.socket unrooted-find-roots.socket
check "after migrate: sandbox = true in nix.conf" inside grep -qx 'sandbox = true' /etc/nix/nix.conf
verify_as_owner() {
  # The store owner's maintenance bypasses `store = daemon` (docs/install.md), in the
  # daemon's mount namespace, where the store is writable.
  as alice 'nix store ping --extra-experimental-features nix-command' >/dev/null || return 1
  inside nsenter -t "$(daemon_pid)" -m setpriv --reuid=unrooted --regid=unrooted --init-groups \
    env HOME=/nix/var/nix nix-store --store local --verify --check-contents
}
check "after migrate: nix-store --verify --check-contents as the store owner" verify_as_owner
old_hashes_kept() {
  [ -s "$old_paths.list" ] || { echo "no old paths recorded"; return 1; }
  as alice "nix-store -q --hash $(tr '\n' ' ' < "$old_paths.list")" | diff - "$old_paths.hashes"
}
check "after migrate: every old path valid with its old hash (nix-store -q --hash through the daemon)" old_hashes_kept
check "after migrate: the store and database belong to the store owner" \
  inside sh -c '[ "$(stat -c %U /nix/store /nix/var/nix/db/db.sqlite | sort -u)" = unrooted ]'
check "after migrate: alice's profile still lists the package" as alice 'nix-env -q | grep -q trivial'
check "after migrate: alice builds through unrooted" build_as_alice after-migrate
check "after migrate: daemon identity" check_daemon_identity
check "after migrate: unrooted doctor exits 0 without warnings" doctor

note "container 2: reboot after the migration (nix-setup-systemd still installed)"
stop_container
if boot migrate; then pass "container 2 boots again"; else fail "container 2 boots again"; exit 1; fi
check "after reboot: units active" inside systemctl is-active unrooted-store.service unrooted-daemon.socket unrooted-find-roots.socket
check_not "after reboot: nix-daemon stays off" inside systemctl is-active nix-daemon.service
check "after reboot: every old path still valid with its old hash" old_hashes_kept
check "after reboot: a user outside nix-users (bob) builds" as bob "printf '%s\n' '${trivial_nix//SALT/bob}' > t.nix && nix-build t.nix -o ~/result"
check "after reboot: unrooted doctor exits 0 without warnings" doctor
stop_container

echo
echo "systemd-test: $passes passed, $failures failed in $(($(date +%s) - started)) s"
[ "$failures" = 0 ]
