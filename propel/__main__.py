from propel.cli import main

main()
