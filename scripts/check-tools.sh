#!/usr/bin/env bash
# Holds the code to install-tools.sh's list of external binaries, so a warm cache cannot hide a
# missing install step (a test that passed only because a developer had built a tool by hand):
#  1. every binary that Rust code starts through `tool("NAME")` or that a script starts as
#     `$BIN/NAME` is in DEFAULT_TOOLS; OPT_IN_TOOLS only from benches/ and scripts/bench-*;
#     Rust starts no other program by a literal name than bash;
#  2. every binary cached in $FLOWPLANE_CACHE/bin is one that install-tools.sh builds;
#  3. with FLOWPLANE_TOOLS set, fills that directory with the default set and nothing else, so
#     the test run finds exactly what a fresh machine has.
# Fails fast, naming the binary and where it is started.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${FLOWPLANE_CACHE:-$HOME/.cache/flowplane}"

mapfile -t default < <(scripts/install-tools.sh --list default)
mapfile -t opt_in < <(scripts/install-tools.sh --list opt-in)
in_list() {
  local name="$1" item
  shift
  for item in "$@"; do [ "$item" = "$name" ] && return 0; done
  return 1
}
failed=0
fail() { echo "check-tools: $*" >&2; failed=1; }

# 1. What the code starts.
while IFS=: read -r file line name; do
  if in_list "$name" "${default[@]}"; then continue; fi
  if in_list "$name" "${opt_in[@]}"; then
    case "$file" in benches/* | scripts/bench-*) continue ;; esac
    fail "$file:$line starts $name, which the test command does not build (OPT_IN_TOOLS)"
  else
    fail "$file:$line starts $name, which install-tools.sh does not install (add it to DEFAULT_TOOLS)"
  fi
done < <(
  grep -rnoE '\btool\("[^"]+"\)' --include='*.rs' src tests benches | sed -E 's/\btool\("([^"]+)"\)$/\1/'
  grep -rnoE '\$BIN/[A-Za-z0-9_.-]+' scripts --include='*.sh' --exclude=install-tools.sh --exclude=check-tools.sh |
    sed -E 's#\$BIN/##'
)
while IFS=: read -r file line name; do
  [ "$name" = bash ] || fail "$file:$line starts $name by name; start it through tool(\"$name\") so it is checked"
done < <(grep -rnoE 'Command::new\("[^"]+"\)' --include='*.rs' src tests benches | sed -E 's/Command::new\("([^"]+)"\)$/\1/')

# 2. What the cache holds (versioned builds are NAME-vX.Y.Z).
for path in "$CACHE"/bin/*; do
  [ -e "$path" ] || continue
  name="$(basename "$path")"
  name="${name%-v[0-9]*}"
  in_list "$name" "${default[@]}" "${opt_in[@]}" ||
    fail "$path is cached but install-tools.sh does not build $name: a test could pass here only"
done

[ "$failed" = 0 ] || exit 1

# 3. The test run's tools: the default set only.
if [ -n "${FLOWPLANE_TOOLS:-}" ] && [ "$FLOWPLANE_TOOLS" != "$CACHE/bin" ]; then
  rm -rf "$FLOWPLANE_TOOLS" && mkdir -p "$FLOWPLANE_TOOLS"
  for name in "${default[@]}"; do
    [ -x "$CACHE/bin/$name" ] || { echo "check-tools: $name is missing from $CACHE/bin" >&2; exit 1; }
    ln -s "$(readlink -f "$CACHE/bin/$name")" "$FLOWPLANE_TOOLS/$name"
  done
fi
