"""The Gradio web app around the engine: one module per tab, one for the API.

`demo.build_demo` puts the tabs together and wires the hand-offs between them; every call into
the model goes through `gpu_tasks`. Nothing outside this package imports gradio or spaces.
"""
