"""Azure Resource Manager (`management.azure.com`).

`app` authenticates, checks api-versions, authorises and routes every request through one path
(`app.dispatch`); `kinds` is the frame each resource type fits in; the resource providers
(`resources` for Microsoft.Resources, `deployments`, `authorization`, `network`, `compute`,
`images`, `hybrid`, `keyvault`, `operations`) register their types when `app.providers()` asks
them to. `versions` and `regions` say what ARM accepts, `lro` how long-running operations are
answered, `templates` and `conditions` are the template language and the role-assignment
condition language. Importing this package imports none of them.
"""
