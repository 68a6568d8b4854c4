"""Java, Maven and the pinned jars (Kafka, Connect, Debezium, Apicurio) from Maven Central.

``stack/pom.xml`` (with its modules) is the single list of what is downloaded; Maven
copies/unpacks it into the dist dir. A stamp keyed by the hash of the POMs makes a
repeated install a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from streaming_ml.config import REPO_ROOT
from streaming_ml.errors import StackError
from streaming_ml.stack.detached import console

logger = logging.getLogger(__name__)

POM_DIR = REPO_ROOT / "stack"
POMS = (
    POM_DIR / "pom.xml",
    POM_DIR / "kafka" / "pom.xml",
    POM_DIR / "apicurio-converter" / "pom.xml",
)
JAVA_HOME_17 = Path("/usr/lib/jvm/java-17-openjdk-amd64")
REGISTRY_JAR = "apicurio-registry-app-3.0.9-runner.jar"
PLUGINS = ("debezium-connector-postgres", "debezium-connector-jdbc", "apicurio-converter")


def maven_argv(mvn: str, dist_dir: Path) -> list[str]:
    """The jars' download: a checksum that does not match Maven Central's fails the build
    (--strict-checksums) instead of a warning nobody reads."""
    pom = str(POMS[0])
    return [mvn, "-B", "--strict-checksums", "-f", pom, f"-Ddist.dir={dist_dir}", "package"]


def java_binary() -> Path:
    """Java 17: the registry 3.0.x and our heap flags are tested on it (not on newer JDKs)."""
    candidate = JAVA_HOME_17 / "bin" / "java"
    if candidate.exists():
        return candidate
    found = shutil.which("java")
    if found is None:
        raise StackError(
            "Java is not installed. Run `streaming-ml stack install` "
            "(or `apt-get install -y openjdk-17-jre-headless`)."
        )
    return Path(found)


def kafka_classpath(dist_dir: Path) -> str:
    return str(dist_dir / "kafka" / "*")


def plugin_dir(dist_dir: Path) -> Path:
    return dist_dir / "plugins"


def registry_jar(dist_dir: Path) -> Path:
    return dist_dir / "apicurio" / REGISTRY_JAR


def jmx_exporter_jar(dist_dir: Path) -> Path:
    return dist_dir / "agents" / "jmx_prometheus_javaagent.jar"


def poms_hash() -> str:
    digest = hashlib.sha256()
    for pom in POMS:
        digest.update(pom.read_bytes())
    return digest.hexdigest()[:16]


def _stamp(dist_dir: Path) -> Path:
    return dist_dir / ".installed"


def jars_present(dist_dir: Path) -> bool:
    """Everything the POMs produce is there, for the current POM contents."""
    try:
        stamp = _stamp(dist_dir).read_text().strip()
    except OSError:
        return False
    return (
        stamp == poms_hash()
        and any((dist_dir / "kafka").glob("kafka_2.13-*.jar"))
        and registry_jar(dist_dir).exists()
        and jmx_exporter_jar(dist_dir).exists()
        and all((plugin_dir(dist_dir) / name).is_dir() for name in PLUGINS)
    )


def fetch_jars(dist_dir: Path) -> None:
    """Resolve the POMs into ``dist_dir`` with Maven (fast no-op when already done)."""
    if jars_present(dist_dir):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven is not installed. Run `streaming-ml stack install` (apt-get install maven)."
        )
    dist_dir.mkdir(parents=True, exist_ok=True)
    log = dist_dir / "maven.log"
    console.print(
        f"[bold]jars[/]: resolving Kafka 4.3, Connect, Debezium 3.6 and Apicurio 3.0.9 from "
        f"Maven Central into {dist_dir} (~300 MB on first run; log: {log})"
    )
    started = time.monotonic()
    argv = maven_argv(mvn, dist_dir)
    env = {**os.environ, "JAVA_HOME": str(JAVA_HOME_17)} if JAVA_HOME_17.exists() else None
    returncode = _run_maven(argv, env, log, started)
    if returncode != 0:
        text = log.read_text(errors="replace")
        errors = [line for line in text.splitlines() if "[ERROR]" in line]
        raise StackError(
            "jars: Maven could not fetch the pinned jars from Maven Central "
            f"(exit {returncode}). Check network access to repo.maven.apache.org, then "
            f"rerun `streaming-ml stack install`. Details in {log}:\n" + "\n".join(errors[:5])
        )
    _stamp(dist_dir).write_text(poms_hash() + "\n")
    console.print(f"[bold]jars[/]: ready in {time.monotonic() - started:.0f}s")


def _run_maven(argv: list[str], env: dict[str, str] | None, log: Path, started: float) -> int:
    """Run Maven, keep its full output in ``log`` and show what it is downloading."""
    downloads = 0
    with console.status("[bold]jars[/]: mvn package starting") as status, log.open("w") as out:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Downloaded from"):
                downloads += 1
                artifact = line.split("/")[-1].split(" ")[0]
                status.update(
                    f"[bold]jars[/]: {downloads} files downloaded, last {artifact} "
                    f"({time.monotonic() - started:.0f}s)"
                )
        return proc.wait()
