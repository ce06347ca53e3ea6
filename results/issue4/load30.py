"""30 s load test from another process across an injected camera failure (issue 4)."""
import json, subprocess, sys, time, re, os
sys.path.insert(0, "/work/main/tests")
from test_serve import LOAD_CLIENT
bundle = sys.argv[1]
srv = subprocess.Popen(["avqa-edge", "serve", bundle, "--demo", "--port", "8765", "--inject", "camera:off@15s",
                        "--duration", "70"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
t0 = time.time()
import urllib.request
while True:
    try:
        if urllib.request.urlopen("http://127.0.0.1:8765/readyz", timeout=2).status == 200:
            break
    except Exception:
        pass
    time.sleep(0.5)
    if time.time() - t0 > 60:
        srv.kill(); sys.exit("server not ready")
print(f"ready after {time.time() - t0:.1f} s", flush=True)
out = subprocess.run([sys.executable, "-c", LOAD_CLIENT, "8765", "none", "20", "30", "How many instruments are sounding?"],
                     capture_output=True, text=True)
print(out.stdout, out.stderr[-2000:])
ready = json.loads(urllib.request.urlopen("http://127.0.0.1:8765/readyz", timeout=5).read())
print("readyz after:", json.dumps(ready)[:600])
srv.terminate()
