psk       = "canary-var-file-0b7e"
count_wbe = 3
