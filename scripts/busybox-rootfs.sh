#!/usr/bin/env bash
# Make a busybox root filesystem offline from Debian's busybox-static package.
#
#   scripts/busybox-rootfs.sh DEST
#
# DEST must not exist or be empty. The result is a minimal but complete root:
# a static /bin/busybox with one symlink per applet, /etc/passwd and
# /etc/group with root and nobody, and the usual empty mount points. It runs
# as any user (ownership is that of the caller; image builders record
# uid/gid 0 in their tar headers).
set -euo pipefail

dest=${1:?usage: busybox-rootfs.sh DEST}
case "$dest" in /*) ;; *) dest="$PWD/$dest" ;; esac

find_busybox() {
    # Prefer the installed busybox-static binary; fall back to unpacking the
    # package from Debian's archive into a scratch directory.
    if dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
        echo /bin/busybox
        return
    fi
    local scratch
    scratch=$(mktemp -d)
    (cd "$scratch" && apt-get download busybox-static >/dev/null)
    dpkg-deb -x "$scratch"/busybox-static_*.deb "$scratch/x"
    echo "$scratch/x/bin/busybox"
}

bb=$(find_busybox)
if ! "$bb" --help >/dev/null 2>&1; then
    echo "busybox-rootfs: $bb does not run" >&2
    exit 1
fi
if ldd "$bb" >/dev/null 2>&1; then
    echo "busybox-rootfs: $bb is dynamically linked; install busybox-static" >&2
    exit 1
fi

mkdir -p "$dest"
if [ -n "$(ls -A "$dest")" ]; then
    echo "busybox-rootfs: $dest is not empty" >&2
    exit 1
fi

cd "$dest"
mkdir -p bin sbin usr/bin usr/sbin etc dev proc sys tmp root home var/tmp var/log var/spool/cron run mnt opt
chmod 1777 tmp var/tmp
chmod 0700 root
install -m 0755 "$bb" bin/busybox

# One relative symlink per applet, placed where busybox says it lives.
"$dest/bin/busybox" --list-full | while read -r applet; do
    case "$applet" in bin/busybox|linuxrc) continue ;; esac
    dir=$(dirname "$applet")
    mkdir -p "$dir"
    rel=$(realpath --relative-to="$dir" bin/busybox)
    ln -sf "$rel" "$applet"
done

cat > etc/passwd <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
PASSWD
cat > etc/group <<'GROUP'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
www-data:x:33:
users:x:100:
nogroup:x:65534:
GROUP
cat > etc/shadow <<'SHADOW'
root:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
SHADOW
chmod 0640 etc/shadow
echo 'hosts: files dns' > etc/nsswitch.conf
: > etc/hosts
: > etc/resolv.conf
: > etc/hostname
