from gcs.main import main

main()
