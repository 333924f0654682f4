"""wdlab inside the tools practitioners already use (optional extras, imported on demand):

  wdlab.integrations.hf         Hugging Face Trainer: optimizers, optimizer_cls_and_kwargs,
                                MonitorCallback / add_monitor      (pip install 'wdlab[hf]')
  wdlab.integrations.lightning  Lightning: configure_optimizers, MonitorCallback
                                                                    (pip install 'wdlab[lightning]')

docs/integrations.md shows each with a runnable snippet.
"""
