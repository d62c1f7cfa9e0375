"""Run a command under host-bypass in an existing network namespace (tests, benchmarks, debugging).

``python -m kboxnet_bypass --netns /run/netns/NAME [--allow RULE]... [--deny RULE]... -- CMD ARGS``

Exits with the command's status; ``--counters FILE`` writes the counters as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from kboxnet_core.backend import NetnsTarget

from .config import BypassConfig
from .runner import HostBypassRunner
from .supervisor import SupervisorSettings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kboxnet_bypass")
    ap.add_argument("--netns", required=True, help="path of the namespace (/run/netns/NAME)")
    ap.add_argument("--netns-pid", type=int, default=0, help="a process in it (joins its user/mount ns)")
    ap.add_argument("--allow", action="append", default=None)
    ap.add_argument("--deny", action="append", default=None)
    ap.add_argument("--no-epoll-rearm", action="store_true")
    ap.add_argument("--counters", help="write counters as JSON to this file")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    kwargs = {}
    if args.allow is not None:
        kwargs["allow"] = [] if args.allow == [""] else args.allow
    if args.deny is not None:
        kwargs["deny"] = [] if args.deny == [""] else args.deny
    cfg = BypassConfig(**kwargs, epoll_rearm=not args.no_epoll_rearm)
    settings = SupervisorSettings(cfg.policy(), cfg.connect_timeout, cfg.epoll_rearm, cfg.log_connections)
    runner = HostBypassRunner(settings)
    pid = runner.spawn(cmd, NetnsTarget(args.netns, "", args.netns_pid), dict(os.environ))
    _, status = os.waitpid(pid, 0)
    runner.close()
    if args.counters:
        with open(args.counters, "w") as fh:
            json.dump(runner.counters(), fh)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by a signal: 128 + signo, as a shell does


if __name__ == "__main__":
    sys.exit(main())
