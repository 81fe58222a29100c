"""`twinbench up` (the services on this machine, until Ctrl-C) and `twinbench data` (downloads)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from twinbench.client.stack import LocalStack
from twinbench.config import Settings


def cmd_data(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.data.download import download

    root = Path(args.dir).resolve() if args.dir else settings.data
    for line in download(args.name, root):
        print(line)
    print(f"{args.name} is ready in {root / args.name}")
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    with LocalStack(settings) as stack:
        print(
            f"gateway {stack.gateway_address} (torch trainer {stack.address('torch_trainer')},"
            f" tf trainer {stack.address('tf_trainer')}); state and logs in {settings.home};"
            " Ctrl-C stops"
        )
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            while not stopped.wait(1.0):
                for name, proc in stack.procs.items():
                    if proc.poll() is not None:
                        print(f"{name} exited ({proc.returncode}):\n{stack.log_tail(name)}")
                        return 1
        except KeyboardInterrupt:
            pass
    return 0
