"""The demo: EDGE end to end on the captioned-shapes world with the tiny stack, offline, on a CPU.

- `config`: `DemoConfig`, every setting, and the rows of the report;
- `run`: `run_demo`, the stages (data, fine-tune, distill, judge, evaluate, report);
- `diagnostics`: how each generated set is judged;
- `report`: `results.json`, `report.md` and `samples.png`.

`from diffusers_edge import DemoConfig, run_demo` is the short way in; `diffusers-edge demo` runs it (docs/demo.md).
"""
