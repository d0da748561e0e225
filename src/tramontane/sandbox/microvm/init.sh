#!/opt/tramontane/busybox sh
# PID 1 of a tier-2 guest. It builds the same filesystem view a tier-1 sandbox
# has (the host's /usr read-only over virtio-9p, or a template's /usr and /etc
# from a read-only disk when the kernel is given root_disk=vda; generated /etc, size-capped
# tmpfs for /home/user, /tmp and /dev/shm, a minimal /dev), then becomes the
# agent as the unprivileged sandbox user. The kernel hands it `workspace_mb`,
# `tmp_mb` and `rlimits` from its command line as environment variables.
# If anything fails, PID 1 exits, the kernel panics and QEMU (-no-reboot) ends.
set -eu
bb=/opt/tramontane/busybox
$bb mount -t proc -o nosuid,nodev,noexec proc /proc
$bb mount -t sysfs -o nosuid,nodev,noexec sys /sys
for module in $($bb cat /opt/tramontane/modules/order); do
    $bb insmod "/opt/tramontane/modules/$module.ko"
done
if [ "${root_disk:-}" = vda ]; then
    # A template's /usr and /etc on a read-only squashfs disk (see microvm/disk.py),
    # mounted through a node that is gone before anything else runs.
    for module in $($bb cat /opt/tramontane/modules/disk-order); do
        $bb insmod "/opt/tramontane/modules/$module.ko"
    done
    for _ in $($bb seq 500); do
        [ -e /sys/block/vda/dev ] && break
        $bb usleep 10000
    done
    disk=$($bb cat /sys/block/vda/dev)
    $bb mknod -m 0600 /root-disk b "${disk%:*}" "${disk#*:}"
    $bb mount -t squashfs -o ro,nosuid,nodev /root-disk /opt/tramontane/root
    $bb rm /root-disk
    $bb mount -o bind /opt/tramontane/root/usr /usr
    $bb mount -o bind /opt/tramontane/root/etc /etc
    $bb umount /opt/tramontane/root
    $bb rmdir /opt/tramontane/root
else
    $bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,nodev,nosuid,cache=loose usr /usr
fi

# A /dev with the usual character devices and nothing else: no disks, no /dev/mem.
$bb mount -t tmpfs -o nosuid,noexec,mode=0755,size=64k dev /dev
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<NODE
$node
NODE
    $bb mknod -m 0666 "/dev/$name" c "$major" "$minor"
done
$bb mkdir /dev/pts /dev/shm
$bb mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666 devpts /dev/pts
$bb ln -s pts/ptmx /dev/ptmx
$bb ln -s /proc/self/fd /dev/fd
$bb ln -s /proc/self/fd/0 /dev/stdin
$bb ln -s /proc/self/fd/1 /dev/stdout
$bb ln -s /proc/self/fd/2 /dev/stderr
$bb ln -s /proc/kcore /dev/core
# The agent's port to the host: opened here, as root, then its node is removed.
# The port appears once QEMU has answered the device's control messages.
port=""
for _ in $($bb seq 500); do
    for dir in /sys/class/virtio-ports/*; do
        [ "$($bb cat "$dir/name" 2>/dev/null)" = agent ] && port=$($bb cat "$dir/dev")
    done
    [ -n "$port" ] && break
    $bb usleep 10000
done
$bb mknod -m 0600 /agent-port c "${port%:*}" "${port#*:}"
exec 0<>/agent-port 1>&0 2>/dev/null
$bb rm /agent-port
$bb umount /sys
# Nothing at /sys or /root, as in tier 1 (the kernel made /root for a root it never mounts).
$bb rmdir /sys /root

$bb mount -t tmpfs -o nosuid,nodev,mode=1777,size="${tmp_mb}m" tmp /tmp
$bb mount -t tmpfs -o nosuid,nodev,mode=1777,size="${tmp_mb}m" shm /dev/shm
$bb mount -t tmpfs -o nosuid,nodev,mode=0700,uid=1000,gid=1000,size="${workspace_mb}m" home /home/user
$bb mount -o remount,ro /dev
$bb ip link set lo up
$bb hostname sandbox
$bb mount -o remount,bind,ro /

cd /home/user
exec $bb env -i /usr/bin/python3 -I -S /opt/tramontane/guest/vmboot.py "$rlimits"
