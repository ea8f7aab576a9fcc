#!/usr/bin/env bash
# RabbitMQ PerfTest for the broker's one-hop ceiling (benchmarks/end_to_end.py, issue 11).
#
# Usage: scripts/perftest.sh install        # resolve the pinned release and its dependencies
#        scripts/perftest.sh run [ARGS...]  # install if needed, then exec PerfTest with ARGS
#        scripts/perftest.sh version
#
# Maven Central publishes only PerfTest's thin jar, so a one-dependency pom is written under
# $FAIRWAY_SERVICES_DIR/perftest [.services/perftest] and `mvn dependency:copy-dependencies`
# copies the jar and its dependencies into lib/ there. Needs Java >= 11 and Maven (both
# from the distribution: `apt-get install openjdk-17-jre-headless maven`). Idempotent: a
# second install with the same version does nothing. Only the benchmark needs it, not
# `make test`.
set -euo pipefail

# The one place the version is pinned.
PERFTEST_VERSION="2.22.1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${FAIRWAY_SERVICES_DIR:-$ROOT/.services}"
DIR="$SERVICES_DIR/perftest"
LIB="$DIR/lib"
STAMP="$DIR/installed-$PERFTEST_VERSION"

die() {
    echo "perftest.sh: $*" >&2
    exit 1
}

install() {
    [[ -f "$STAMP" ]] && return 0
    command -v java >/dev/null || die "java not found (apt-get install openjdk-17-jre-headless)"
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    mkdir -p "$DIR"
    cat >"$DIR/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fairway</groupId>
  <artifactId>fairway-perftest</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>com.rabbitmq</groupId>
      <artifactId>perf-test</artifactId>
      <version>$PERFTEST_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
    rm -rf "$LIB" "$DIR"/installed-*
    echo "perftest.sh: resolving com.rabbitmq:perf-test:$PERFTEST_VERSION with Maven" >&2
    mvn -q -B -f "$DIR/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIB" >&2 \
        || die "mvn could not resolve com.rabbitmq:perf-test:$PERFTEST_VERSION"
    [[ -f "$LIB/perf-test-$PERFTEST_VERSION.jar" ]] || die "perf-test jar missing from $LIB"
    touch "$STAMP"
}

case "${1:-}" in
    install) install ;;
    run)
        shift
        install
        exec java -cp "$LIB/*" com.rabbitmq.perf.PerfTest "$@"
        ;;
    version) echo "$PERFTEST_VERSION" ;;
    *) die "usage: $0 install|run [ARGS...]|version" ;;
esac
