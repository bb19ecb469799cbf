"""``cnnlab lab``: a local web app to build, train and look inside convolutional networks.

The lecture's convnetjs demos (Xiaolin Hu, *Deep Learning*, Tsinghua University, lecture 5 "CNNs
II") and CNN Explainer's views (Wang et al., IEEE VIS 2020), on real PyTorch models:

    Build          a layer list (``cnnlab.spec``) or a zoo model; the per-layer table with the
                   lecture's formulas, updated as you type
    Train          live, one job at a time: pause, resume, stop; knobs take effect at the next step
    Look inside    every layer's activations for a test image, the first filters, probabilities
    Convolution    one output neuron with its dot product written out; the 7x7 size widget
    Draw           a digit on a canvas, made 28x28 like MNIST, and the network's probabilities
    Keep           save as a run directory (``cnnlab eval`` reads it); load any run to look inside

    >>> from cnnlab.lab import Lab, serve
    >>> serve(Lab("runs"), port=8000)

Modules: ``core`` (the state: network, job, points, runs), ``job`` (the training thread),
``views`` (what the views compute), ``server`` (Starlette routes and server-sent events),
``static/`` (the page: HTML, JS, CSS; no build step, nothing fetched from the internet).
"""
from cnnlab.lab.core import Busy, Lab, load_run
from cnnlab.lab.job import Knobs, TrainingJob

__all__ = ["Busy", "Knobs", "Lab", "TrainingJob", "load_run", "serve"]


def serve(lab: Lab, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    from cnnlab.lab.server import serve as _serve

    _serve(lab, host=host, port=port)
