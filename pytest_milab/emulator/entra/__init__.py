"""Microsoft Entra ID: the sign-in endpoints (`login`), user accounts and their sign-in flows
(`users`), the access tokens issued (`tokens`) and Microsoft Graph's directory (`graph`)."""
