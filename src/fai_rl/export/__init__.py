"""fai-rl-export: a trained model as a plain Hugging Face model dir (LoRA merged), with a model card; optionally pushed
to the hub or wrapped in a ready-to-deploy Modal app. The CLI is fai_rl.cli.export; each step is one module here:

    tinker.py  download a Tinker adapter that was left on the service
    merge.py   load the source, merge LoRA into its base, save safetensors + tokenizer (+ fai_rl.json)
    card.py    README.md: front matter, what was trained, the resolved recipe, the final metrics, how to load
    hub.py     create_repo + upload_folder with the token from the environment
    modal.py   modal_app.py + client.py + DEPLOY.md from modal_app.py.tmpl
"""
