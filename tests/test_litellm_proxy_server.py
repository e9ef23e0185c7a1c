"""The proxy hook inside a real LiteLLM proxy app (in-process, mocked model), in a subprocess
so the proxy's global state never leaks into other tests. Needs ``litellm[proxy]``; skipped
(with the reason) where its extra dependencies are not installed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.anyio

CONFIG = """
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-not-used
      mock_response: "Hello from the mocked proxy, every token is billed."
litellm_settings:
  callbacks: credit_hooks.credits
"""

HOOKS = """
import os
from credit_middleware.integrations.litellm_proxy import CreditProxyHook, end_user
credits = CreditProxyHook.from_url(os.environ["CM_LEDGER_URL"], identify=end_user)
"""

DRIVER = """
import asyncio, json, os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
os.environ["CM_LEDGER_URL"] = sys.argv[1]
import httpx
from credit_middleware import Ledger

async def main():
    ledger = Ledger(sys.argv[1])
    await ledger.migrate()
    from litellm.proxy.proxy_server import app, initialize
    await initialize(config=os.path.join(here, "config.yaml"))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "user": "proxy-user"}
    out = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
        r = await c.post("/chat/completions", json=body)
        out["plain"] = [r.status_code, r.headers.get("credit-balance")]
        r = await c.post("/chat/completions", json={**body, "stream": True})
        out["stream"] = [r.status_code, "[DONE]" in r.text]
        big = {**body, "user": "poor-user", "max_tokens": 10_000_000}
        r = await c.post("/chat/completions", json=big)
        out["poor"] = [r.status_code, r.text]
    for _ in range(200):  # success callbacks run in the background
        captures = [e for e in await ledger.history("proxy-user") if e.kind == "capture"]
        if len(captures) == 2:
            break
        await asyncio.sleep(0.02)
    out["captures"] = [e.amount_micros for e in captures]
    out["holds"] = len(await ledger.holds("proxy-user")) + len(await ledger.holds("poor-user"))
    out["ok"] = (await ledger.verify()).ok
    await ledger.close()
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)  # the proxy leaves non-daemon threads (schedulers, log workers) behind

asyncio.run(main())
"""


def _proxy_importable() -> str | None:
    probe = subprocess.run(
        [sys.executable, "-c", "import litellm.proxy.proxy_server"],
        capture_output=True,
        text=True,
        timeout=120,
        env=None,
        check=False,
    )
    return None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["?"])[-1]


async def test_a_real_proxy_bills_through_the_hook(tmp_path: Path) -> None:
    missing = await asyncio.to_thread(_proxy_importable)
    if missing is not None:
        pytest.skip(f"litellm[proxy] is not installed here ({missing})")
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "credit_hooks.py").write_text(HOOKS)
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(tmp_path / "driver.py"),
        f"sqlite:///{tmp_path / 'credits.db'}",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [ln for ln in stdout.decode().splitlines() if ln.startswith("RESULT ")]
    assert lines, stderr.decode()[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["plain"][0] == 200 and out["plain"][1] is not None  # Credit-Balance header
    assert out["stream"] == [200, True]
    assert out["poor"][0] == 402 and "insufficient_credits" in out["poor"][1]
    assert len(out["captures"]) == 2 and all(m > 0 for m in out["captures"])
    assert 14 in out["captures"]  # the plain call: 10 prompt + 20 completion tokens
    assert out["holds"] == 0 and out["ok"] is True
