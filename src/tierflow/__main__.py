from tierflow.cli import main

main()
