import faulthandler, torch, flashinfer
faulthandler.enable()
x = torch.randn(2, 7, device="cuda", dtype=torch.bfloat16)
for name, call in [("gelu_and_mul out", lambda: flashinfer.gelu_and_mul(torch.randn(2, 8, device="cuda"), out=torch.randn(2, 8, device="cuda"))),
                   ("silu_and_mul_out odd", lambda: torch.ops.flashinfer.silu_and_mul_out(torch.empty(2, 3, device="cuda", dtype=torch.bfloat16), x)),
                   ("silu_and_mul odd", lambda: torch.ops.flashinfer.silu_and_mul(x))]:
    try:
        call()
        print(name, "no error")
    except Exception as e:
        print(name, "->", str(e).splitlines()[0])
