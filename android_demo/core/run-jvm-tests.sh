#!/usr/bin/env bash
# Compiles the pure-Kotlin core module and its JUnit4 tests with kotlinc and runs them.
# No Gradle, no Android SDK, no Maven: kotlinc comes from npm (kotlin-compiler), JUnit from Debian.
# Last line of output: "N passed, N failed". Exit status non-zero on any failure.
set -euo pipefail

CORE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$CORE/../.." && pwd)"
TOKENIZER_DIR="${MDEXPORT_TOKENIZER_DIR:-$REPO/src/md_export/default_model/tokenizer}"

find_kotlinc() {
  if command -v kotlinc >/dev/null 2>&1; then command -v kotlinc; return; fi
  local root
  for root in "$(npm root -g 2>/dev/null || true)" "$CORE/.tools/node_modules"; do
    if [ -n "$root" ] && [ -x "$root/kotlin-compiler/bin/kotlinc" ]; then echo "$root/kotlin-compiler/bin/kotlinc"; return; fi
  done
}

KOTLINC="$(find_kotlinc || true)"
if [ -z "$KOTLINC" ]; then
  echo "installing kotlin-compiler from npm ..." >&2
  if ! npm install -g kotlin-compiler >/dev/null 2>&1; then
    npm install --prefix "$CORE/.tools" kotlin-compiler >/dev/null
  fi
  KOTLINC="$(find_kotlinc)"
fi

JUNIT=/usr/share/java/junit4.jar
HAMCREST=/usr/share/java/hamcrest-core.jar
if [ ! -f "$JUNIT" ] || [ ! -f "$HAMCREST" ]; then
  echo "installing junit4 from Debian ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq junit4 >/dev/null
fi

BUILD="$(mktemp -d "${TMPDIR:-/tmp}/mdexport-core-tests.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT

echo "kotlinc: $KOTLINC" >&2
mapfile -t MAIN_SRC < <(find "$CORE/src/main/kotlin" -name '*.kt' | sort)
mapfile -t TEST_SRC < <(find "$CORE/src/test/kotlin" -name '*.kt' | sort)

# One compiler run for main + tests (JVM start-up dominates); main sources must not see JUnit,
# so compile main first only when asked (MDEXPORT_STRICT=1).
if [ "${MDEXPORT_STRICT:-0}" = "1" ]; then
  "$KOTLINC" -nowarn -jvm-target 17 -d "$BUILD/main" "${MAIN_SRC[@]}" 2>&1 | grep -v '^warning' >&2 || true
  [ -d "$BUILD/main/dev" ] || { echo "main compilation failed"; echo "0 passed, 1 failed"; exit 1; }
fi
if ! "$KOTLINC" -nowarn -jvm-target 17 -cp "$JUNIT:$HAMCREST" -d "$BUILD/classes" "${MAIN_SRC[@]}" "${TEST_SRC[@]}" 2>"$BUILD/kotlinc.log"; then
  cat "$BUILD/kotlinc.log" >&2
  echo "compilation failed"
  echo "0 passed, 1 failed"
  exit 1
fi
cp -r "$CORE/src/test/resources/." "$BUILD/classes/"

KOTLIN_HOME="$(cd "$(dirname "$(readlink -f "$KOTLINC")")/.." && pwd)"
STDLIB="$KOTLIN_HOME/lib/kotlin-stdlib.jar"

mapfile -t CLASSES < <(cd "$BUILD/classes" && find . -name '*Test.class' ! -name '*$*' | sed 's|^\./||; s|\.class$||; s|/|.|g' | sort)
set +e
java -Dmdexport.tokenizerDir="$TOKENIZER_DIR" -cp "$BUILD/classes:$STDLIB:$JUNIT:$HAMCREST" \
  org.junit.runner.JUnitCore "${CLASSES[@]}" >"$BUILD/junit.log" 2>&1
STATUS=$?
set -e
cat "$BUILD/junit.log"
RUN=$(grep -oE '^OK \(([0-9]+) tests?\)' "$BUILD/junit.log" | grep -oE '[0-9]+' || true)
if [ -n "$RUN" ]; then
  PASSED=$RUN; FAILED=0
else
  TOTAL=$(grep -oE 'Tests run: [0-9]+' "$BUILD/junit.log" | grep -oE '[0-9]+' || echo 0)
  FAILED=$(grep -oE 'Failures: [0-9]+' "$BUILD/junit.log" | grep -oE '[0-9]+' || echo 1)
  PASSED=$((TOTAL - FAILED))
fi
[ "$STATUS" -ne 0 ] && [ "$FAILED" -eq 0 ] && FAILED=1
echo "$PASSED passed, $FAILED failed"
[ "$STATUS" -eq 0 ] && [ "$FAILED" -eq 0 ]
