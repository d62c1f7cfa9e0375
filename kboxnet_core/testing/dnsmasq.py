"""A throw-away dnsmasq resolver on loopback (dnsmasq-base's binary, no service)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .dns import query_a
from .netns import Netns
from .nsenter import call_in_netns
from .ports import free_tcp_udp_port
from .procs import stop_process, wait_for


class Dnsmasq:
    """dnsmasq answering only for the given domains, from ``127.0.0.1:<port>``.

    It never forwards (``--no-resolv``) and reads no host files, so a test
    lookup cannot leave the machine. ``addresses`` maps a domain to the
    IPv4 address every name under it resolves to.

    :ivar port: the UDP/TCP port it listens on.
    :ivar netns: the namespace it runs in (None: the current one).
    """

    def __init__(
        self,
        addresses: Mapping[str, str] | None = None,
        netns: Netns | None = None,
        port: int | None = None,
        listen: str = "127.0.0.1",
        binary: str | None = None,
    ) -> None:
        self.addresses = dict(addresses or {"example.test": "10.0.2.2"})
        self.netns = netns
        self.listen = listen
        self.port = port or 0
        self.binary = binary or shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.proc: subprocess.Popen | None = None
        self._logdir = Path(tempfile.mkdtemp(prefix="kbn-dnsmasq-"))
        self.log_path = self._logdir / "dnsmasq.log"

    @staticmethod
    def available() -> str | None:
        """None if dnsmasq is installed, else the reason."""
        if shutil.which("dnsmasq") or Path("/usr/sbin/dnsmasq").exists():
            return None
        return "dnsmasq not installed (apt-get install dnsmasq-base)"

    def argv(self) -> list[str]:
        args = [
            self.binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            f"--listen-address={self.listen}",
            "--except-interface=nothing",
            f"--port={self.port}",
            "--pid-file=",
            "--user=root",
            "--log-queries",
            "--log-facility=-",
        ]
        args += [f"--address=/{domain}/{addr}" for domain, addr in self.addresses.items()]
        return args

    def start(self, timeout: float = 5.0, tries: int = 5) -> Dnsmasq:
        """Start and wait until it answers. A port picked here (``port`` 0) is released before
        dnsmasq binds it; when another process takes it meanwhile (a busy machine), dnsmasq
        exits with "Address already in use" and is started again on another port."""
        fixed = bool(self.port)
        ns = self.netns.name if self.netns else None
        try:
            for attempt in range(1 if fixed else tries):
                if not fixed:
                    self.port = call_in_netns(ns, lambda: free_tcp_udp_port(self.listen))
                try:
                    return self._start_once(timeout)
                except RuntimeError as exc:
                    if fixed or "Address already in use" not in str(exc) or attempt == tries - 1:
                        raise
            raise AssertionError("unreachable")
        except BaseException:
            self.stop()
            raise

    def _start_once(self, timeout: float) -> Dnsmasq:
        prefix = self.netns.prefix() if self.netns else []
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen([*prefix, *self.argv()], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        probe = next(iter(self.addresses))
        try:
            self._wait_answering(probe, timeout)
        except BaseException:
            self._stop_process()  # never leave a dnsmasq behind when start-up fails
            raise
        return self

    def _wait_answering(self, probe: str, timeout: float) -> None:
        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited {self.proc.returncode}: {self.log()}")
            try:
                return bool(self.lookup(f"probe.{probe}", timeout=0.2))
            except OSError:
                return False

        wait_for(answers, timeout, what="dnsmasq to answer")

    def lookup(self, name: str, timeout: float = 2.0) -> list[str]:
        """Resolve ``name`` through this dnsmasq (from its namespace)."""
        ns = self.netns.name if self.netns else None
        return call_in_netns(ns, lambda: query_a(self.listen, self.port, name, timeout))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _stop_process(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def stop(self) -> None:
        self._stop_process()
        shutil.rmtree(self._logdir, ignore_errors=True)

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
