from lklab.cli import app

app()
