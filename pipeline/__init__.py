"""dptstream's pipeline, in layers. Each layer is a folder (or, at the base, a module); a module imports only
modules of a lower layer or of its own folder, never a higher layer and never a sibling folder of its own layer
(``tools/layers.py`` checks this on every import, function-local ones included; ``tests/unit/test_layers.py``).

Bottom to top::

    engines/                                    (outside pipeline: one interface, a factory, a file per backend)
    frames queues redact config configfile metrics progress       base: data, policy, redaction, config and
        overlay sample checkpoints zones                          its reading, pure drawing, tiny checkpoints,
                                                                  zone geometry + debounce
    sources/ (base file live reconnect)                           the data flow, one file per stage/backend
        stages/ (base preprocess infer postprocess masks depth zoning publish gpu)
        sinks/ (base encode redis rediskeys directory video)
    runtime/ (pipeline app degrade)                               wiring sources -> stages -> sinks
    jobs/ (keys submit status worker)  benchmark/ (plan timing engine e2e naive results run onnx_check)
        view/ (stats security render hub server page.html)        the live view: reads Redis, serves HTTP
    cli/ (main common run show sample engine bench jobs snapshot view alerts)  the only code that knows
                                                                  typer/click,
                                                                  exit codes and signals

A frame goes: ``sources`` -> queue ``decoded:{stream}`` -> ``stages.preprocess`` -> ``prepared`` ->
``stages.infer`` -> ``inferred`` -> ``stages.postprocess`` -> ``results`` -> ``stages.publish`` -> ``sinks``.
"""
