web_db_psk = "golden-canary-psk-7f3a"
