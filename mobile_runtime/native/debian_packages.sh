# Sourced by build.sh and cross_aarch64.sh: ensure_debian_packages WHO PKG... installs the Debian
# packages that are missing (apt-get; sudo when not root) and says which, prefixed with WHO.
ensure_debian_packages() {
    local who="$1"; shift
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "$who: installing ${missing[*]} from Debian" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
