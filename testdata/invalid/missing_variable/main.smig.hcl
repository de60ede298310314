variable "web_db_psk" {
  type      = string
  sensitive = true
}

variable "region" {
  description = "where the cloud hosts are"
}

locals {
  psk = var.web_db_psk
}
