"""Load test of `serve`: 20 client threads in another process POST /ask for 30 s on loopback,
across an injected camera failure (results/serve/load_test.json).

    python results/serve/load_test.py BUNDLE     # from the repository root, .venv active
"""
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_serve import LOAD_CLIENT  # noqa: E402  the client the test suite runs for a shorter time

bundle = sys.argv[1]
srv = subprocess.Popen(["avqa-edge", "serve", bundle, "--demo", "--port", "8765", "--inject", "camera:off@15s",
                        "--duration", "70"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
t0 = time.time()
while True:
    try:
        if urllib.request.urlopen("http://127.0.0.1:8765/readyz", timeout=2).status == 200:
            break
    except Exception:
        pass
    time.sleep(0.5)
    if time.time() - t0 > 60:
        srv.kill()
        sys.exit("server not ready")
print(f"ready after {time.time() - t0:.1f} s", flush=True)
out = subprocess.run([sys.executable, "-c", LOAD_CLIENT, "8765", "none", "20", "30", "How many instruments are sounding?"],
                     capture_output=True, text=True)
print(out.stdout, out.stderr[-2000:])
ready = json.loads(urllib.request.urlopen("http://127.0.0.1:8765/readyz", timeout=5).read())
print("readyz after:", json.dumps(ready)[:600])
srv.terminate()
