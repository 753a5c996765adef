# vdi-common.sh - helpers shared by tests/interop/test_vdi_*.sh (sourced).
# Uses tests/interop/lib.sh when it exists; stands alone otherwise.
# Exit codes follow run.sh: 0 pass, 4 skip, anything else fail.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -f "$here/lib.sh" ] && . "$here/lib.sh"
declare -F require_format >/dev/null && require_format vdi raw
: "${UBLKD:=$here/../../build/ublkd}"
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 4; }
[ -x "$UBLKD" ] || { echo "SKIP: $UBLKD not built"; exit 4; }
if [ -n "${WORK:-}" ]; then
    VDI_TMP=$WORK                 # lib.sh's scratch dir, removed by its trap
else
    VDI_TMP=$(mktemp -d /tmp/ublkd-vdi.XXXXXX)
    trap 'rm -rf "$VDI_TMP"' EXIT
fi
vdi_fail() { echo "FAIL: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# Both tools convert $1 (vdi) to raw; the results must be byte-identical.
vdi_same_raw() {
    local img=$1 tag=$2
    qemu-img convert -f vdi -O raw "$img" "$VDI_TMP/$tag.q.raw" || vdi_fail "$tag: qemu-img convert"
    "$UBLKD" img convert -f vdi -O raw "$img" "$VDI_TMP/$tag.u.raw" || vdi_fail "$tag: ublkd img convert"
    [ "$(sha "$VDI_TMP/$tag.q.raw")" = "$(sha "$VDI_TMP/$tag.u.raw")" ] ||
        vdi_fail "$tag: raw images differ (qemu-img vs ublkd)"
    echo "ok: $tag reads identically"
}

# qemu-img check must find the image clean.
vdi_qemu_clean() {
    qemu-img check -f vdi "$1" >"$VDI_TMP/check.out" 2>&1 ||
        { cat "$VDI_TMP/check.out"; vdi_fail "qemu-img check $1"; }
}

# Set the little-endian u32/u64 at byte offset $2 of file $1 to $3.
vdi_poke32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($3 & 255)) $((($3 >> 8) & 255)) $((($3 >> 16) & 255)) $((($3 >> 24) & 255)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
vdi_poke64() { vdi_poke32 "$1" "$2" $(($3 & 0xffffffff)); vdi_poke32 "$1" $(($2 + 4)) $(($3 >> 32)); }
