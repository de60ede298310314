secure_link "web_db" {
  between = [vm.web, vm.db]
  ipsec {
    proposals = ["aes256-sha256-modp2048"]
    psk       = "not-a-variable"
    cert      = "/etc/pki/cert.pem"
  }
}
