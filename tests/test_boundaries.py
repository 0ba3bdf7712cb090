"""The library stays pure: importing all of ``ecrec_stream`` pulls in no Kafka or Faust."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("faust", "confluent_kafka", "aiokafka", "mode")


def test_library_imports_no_streaming_runtime() -> None:
    code = (
        "import pkgutil, importlib, sys, ecrec_stream\n"
        "for m in pkgutil.walk_packages(ecrec_stream.__path__, 'ecrec_stream.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"ecrec_stream imported: {out.stdout}"
