from cellgen.cli import main

main()
