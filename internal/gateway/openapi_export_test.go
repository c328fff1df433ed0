package gateway

// RESTRoutes is restRoutes of the services the gateway serves, for the external tests.
func RESTRoutes() (map[string]string, error) { return restRoutes(platformServices...) }
