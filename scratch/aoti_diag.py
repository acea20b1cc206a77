# Does AOTInductor's fresh-process load work on this machine, for a model without flashinfer ops and with?
import os, subprocess, sys, tempfile
import torch
if len(sys.argv) > 1:
    import faulthandler; faulthandler.enable()
    path, kind, dev = sys.argv[1:4]
    if kind == "flashinfer":
        sys.path.insert(0, "tests")
        import flashinfer  # noqa
        print("imported flashinfer", flush=True)
    m = torch._inductor.aoti_load_package(path)
    print("loaded", flush=True)
    x = torch.randn(4, 16, device=dev) if kind == "plain" else None
    if kind == "plain":
        print("ran", m(x).shape, flush=True)
    else:
        from compose_block import make_inputs
        print("ran", m(*make_inputs(4, dev))[0].shape, flush=True)
    sys.exit(0)
d = tempfile.mkdtemp()
sys.path.insert(0, "tests")
for dev in ("cuda",):
    m = torch.nn.Linear(16, 8).to(dev)
    ep = torch.export.export(m, (torch.randn(4, 16, device=dev),))
    p = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(d, f"plain_{dev}.pt2"))
    r = subprocess.run([sys.executable, __file__, p, "plain", dev], capture_output=True, text=True)
    print(dev, "plain: rc", r.returncode, r.stdout.strip(), r.stderr.strip()[-800:], flush=True)
    import flashinfer
    from compose_block import Block, make_inputs
    ep = torch.export.export(Block().to(dev), make_inputs(4, dev))
    p = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(d, f"block_{dev}.pt2"))
    r = subprocess.run([sys.executable, __file__, p, "flashinfer", dev], capture_output=True, text=True)
    print(dev, "block: rc", r.returncode, r.stdout.strip(), r.stderr.strip()[-2500:], flush=True)
    # Same process (no fresh start):
    m2 = torch._inductor.aoti_load_package(p)
    print(dev, "block same process:", m2(*make_inputs(4, dev))[0].shape, flush=True)
