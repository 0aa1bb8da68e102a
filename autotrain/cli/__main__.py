from autotrain.cli import main

main(prog_name="autotrain")
