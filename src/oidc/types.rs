//! Named aliases for the openidconnect generics chatgate uses: provider metadata
//! with the extra fields we read (RFC 9207, RFC 7009), ID tokens whose extra
//! claims we keep (`oid`, `tid`, ...), and the client built from discovery.

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, EmptyExtraTokenFields, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IdToken, IdTokenClaims, IdTokenFields, StandardErrorResponse,
    StandardTokenResponse,
};
use serde::{Deserialize, Serialize};

/// Provider metadata fields beyond OIDC Discovery's core set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraMetadata {
    /// RFC 9207: the IdP puts `iss` in authorization responses.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// RFC 7009 token revocation.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// RP-Initiated Logout: where a browser is sent to end the IdP session.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// Back-Channel Logout: the IdP sends logout tokens.
    #[serde(default)]
    pub backchannel_logout_supported: Option<bool>,
    #[serde(default)]
    pub backchannel_logout_session_supported: Option<bool>,
    /// Front-Channel Logout: the IdP's logout page frames the RP's URL.
    #[serde(default)]
    pub frontchannel_logout_supported: Option<bool>,
    #[serde(default)]
    pub frontchannel_logout_session_supported: Option<bool>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

/// Every ID-token claim that is not an OIDC standard claim (`oid`, `tid`, ...).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for ExtraClaims {}

pub type ProviderMetadata = openidconnect::ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

pub type IdTokenT = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
pub type IdTokenClaimsT = IdTokenClaims<ExtraClaims, CoreGenderClaim>;

pub type TokenResponse = StandardTokenResponse<
    IdTokenFields<
        ExtraClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

pub type TokenErrorResponse = StandardErrorResponse<CoreErrorResponseType>;

/// The client `Client::from_provider_metadata` returns: authorization endpoint
/// set, token and userinfo endpoints as discovered (chatgate makes its own RFC
/// 7009 revocation request, so the client's revocation URL stays unset).
pub type OidcClient = openidconnect::Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    TokenErrorResponse,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;
