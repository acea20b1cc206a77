import torch, flashinfer
from torch._inductor.utils import run_and_get_code

class Block(torch.nn.Module):
    def __init__(self, hidden=64, hq=4, hk=2, d=16, inter=96):
        super().__init__()
        self.hq, self.hk, self.d = hq, hk, d
        self.norm_w = torch.nn.Parameter(torch.randn(hidden))
        self.qkv = torch.nn.Linear(hidden, (hq + 2 * hk) * d, bias=False)
        self.up = torch.nn.Linear(hidden, 2 * inter, bias=False)
        self.down = torch.nn.Linear(inter, hidden, bias=False)
    def forward(self, x, residual, pos_ids):
        flashinfer.fused_add_rmsnorm(x, residual, self.norm_w)
        qkv = self.qkv(x)
        t = x.shape[0]
        q = qkv[:, : self.hq * self.d].view(t, self.hq, self.d)
        k = qkv[:, self.hq * self.d : (self.hq + self.hk) * self.d].view(t, self.hk, self.d)
        flashinfer.apply_rope_pos_ids_inplace(q, k, pos_ids)
        h = flashinfer.silu_and_mul(self.up(x))
        return self.down(h) + q.sum((1, 2))[:, None] + k.sum((1, 2))[:, None]

torch.manual_seed(0)
m = Block()
def inputs(t):
    return torch.randn(t, 64), torch.randn(t, 64), torch.arange(t, dtype=torch.int32)
with torch.no_grad():
    c = torch.compile(m, fullgraph=True, dynamic=True)
    out, code = run_and_get_code(c, *inputs(3))
    print(code[0][code[0].index("def call"):][:5000])
    ep = torch.export.export(m, inputs(4), dynamic_shapes=({0: torch.export.Dim("T")}, {0: torch.export.Dim("T")}, {0: torch.export.Dim("T")}))
    pass
    pass
