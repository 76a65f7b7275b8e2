from deconvviz_cli.main import cli

cli(prog_name="deconvviz")
