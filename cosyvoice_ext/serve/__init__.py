"""`cosyext serve`: many fine-tuned voices on one base model behind OpenAI's speech API (docs/serve.md).

- :mod:`.config`   speaker_config.json: the keyed form (and the old list form, migrated), paths, --root
- :mod:`.models`   upstream inference instances; each voice's LoRA as named peft adapters on its base
- :mod:`.service`  the voice table, reload, and the one synthesis thread every request queues on
- :mod:`.audio`    wav / pcm / mp3 (ffmpeg), whole or streamed
- :mod:`.app`      the FastAPI routes and the page at /

Importing this package imports nothing heavy; torch, upstream and FastAPI come with the modules.
"""
