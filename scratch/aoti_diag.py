# Does AOTInductor's fresh-process load work on this machine for a model without flashinfer ops?
import os, subprocess, sys, tempfile, torch
d = tempfile.mkdtemp()
if len(sys.argv) > 1:
    import faulthandler; faulthandler.enable()
    if sys.argv[2] == "flashinfer":
        import flashinfer  # noqa
    m = torch._inductor.aoti_load_package(sys.argv[1])
    print("loaded", flush=True)
    print("ran", m(torch.randn(4, 16, device=sys.argv[3])).shape if sys.argv[2] == "plain" else "-", flush=True)
    sys.exit(0)
for dev in ("cpu", "cuda"):
    m = torch.nn.Linear(16, 8).to(dev)
    ep = torch.export.export(m, (torch.randn(4, 16, device=dev),))
    p = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(d, f"plain_{dev}.pt2"))
    r = subprocess.run([sys.executable, __file__, p, "plain", dev], capture_output=True, text=True)
    print(dev, "plain AOTI fresh process rc", r.returncode, r.stdout.strip(), r.stderr.strip()[-1500:])
