variable "target" {
  type        = string
  default     = "dr.dr1"
  description = "the host the application moves to, as ENV.HOST"
}

subnet "app" {
  cidr = "192.168.40.0/24"
}

vm "frontend" {
  host    = var.target
  subnet  = subnet.app
  address = "192.168.40.10"
}

vm "backend" {
  host    = var.target
  subnet  = subnet.app
  address = "192.168.40.11"
  migration {
    mode = "cold"
  }
}

vm "ldap" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.40.12"
}
