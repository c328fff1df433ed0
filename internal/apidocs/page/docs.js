// The API explorer: Swagger UI on this server's OpenAPI document. Everything it loads comes from this
// server (the Content-Security-Policy allows nothing else); "Authorize" takes a bearer JWT, kept in
// memory only, and "Try it out" calls the REST API with it.
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    docExpansion: "list",
    displayRequestDuration: true,
    persistAuthorization: false,
    // The default would send the document to an online validator.
    validatorUrl: null,
  });
});
