#!/usr/bin/env node
// Unmodified AWS SDKs for JavaScript against ccstream, with only their endpoints pointed at it.
//
//   node sdk.js v2-cognito <endpoint> <provider> <token> <own domain> <foreign domain>
//       aws-sdk v2 as the spec's client example: AWS.CognitoIdentityCredentials with
//       Logins {provider: token}, new AWS.Lambda().invoke(...), JSON.parse(errorMessage).
//   node sdk.js v3-web-token <endpoint> <token> <own domain> <foreign domain>
//       @aws-sdk/client-lambda with fromWebToken (STS AssumeRoleWithWebIdentity).
//   node sdk.js v3-cognito <endpoint> <provider> <token> <own domain> <foreign domain>
//       @aws-sdk/client-lambda with fromCognitoIdentity (after GetId).
//
// Each makes a rule in its own domain, lists it, is refused one in the foreign domain
// (NOT_AUTHORIZED_DOMAIN) and removes its rule. Prints "sdk.js: OK" or exits 1 with the first
// mismatch. Run by tests/web_identity.rs.
'use strict';

const FUNCTION = 'dev-RuleLambda-12345';
const REGION = 'eu-west-1';
const POOL = 'eu-west-1:00000000-0000-0000-0000-000000000000';

function fail(message) {
  console.error(`sdk.js: FAIL: ${message}`);
  process.exit(1);
}

function check(cond, message) {
  if (!cond) fail(message);
}

function attrs(domain) {
  return {
    name: `made from node in ${domain}`,
    enabled: true,
    filter: { domain, thingType: 'Pump', thingNames: ['thing-101'] },
    expression: { operator: 'gte', resource: 'temp', value: 50 },
    actions: [{ type: 'WEBHOOK', config: { url: 'https://example.com/hook' } }],
  };
}

// `invoke(payload)` resolves to {functionError, payload}: the Lambda answer, its Payload parsed.
async function round(invoke, own, foreign) {
  const made = await invoke({ action: 'CREATE', attributes: attrs(own) });
  check(!made.functionError, `CREATE in ${own}: ${JSON.stringify(made.payload)}`);
  const rule = made.payload;
  check(rule.filter.domain === own, `CREATE answered ${JSON.stringify(rule)}`);

  const listed = await invoke({ action: 'LIST' });
  check(listed.payload.some((r) => r.id === rule.id), 'the rule made is not listed');

  const refused = await invoke({ action: 'CREATE', attributes: attrs(foreign) });
  check(refused.functionError === 'Unhandled', `CREATE in ${foreign} was not refused`);
  // The spec's clients parse the error like this.
  const error = JSON.parse(refused.payload.errorMessage);
  check(error.messageKey === 'NOT_AUTHORIZED_DOMAIN', `CREATE in ${foreign}: ${refused.payload.errorMessage}`);

  const removed = await invoke({ action: 'REMOVE', attributes: { id: rule.id } });
  check(!removed.functionError && removed.payload === null, 'REMOVE did not answer null');
}

async function v2Cognito(endpoint, provider, token, own, foreign) {
  const AWS = require('aws-sdk');
  AWS.config.region = REGION;
  AWS.config.credentials = new AWS.CognitoIdentityCredentials(
    { IdentityPoolId: POOL, Logins: { [provider]: token } },
    { endpoint, region: REGION },
  );
  const lambda = new AWS.Lambda({ endpoint, maxRetries: 0 });
  await round(async (payload) => {
    const data = await lambda
      .invoke({ FunctionName: FUNCTION, Payload: JSON.stringify(payload) })
      .promise();
    return { functionError: data.FunctionError, payload: JSON.parse(data.Payload) };
  }, own, foreign);
  check(AWS.config.credentials.accessKeyId.startsWith('ASIA'), 'not temporary credentials');
}

function v3Invoker(lambda) {
  const { InvokeCommand } = require('@aws-sdk/client-lambda');
  return async (payload) => {
    const data = await lambda.send(new InvokeCommand({
      FunctionName: FUNCTION,
      Payload: Buffer.from(JSON.stringify(payload)),
    }));
    return {
      functionError: data.FunctionError,
      payload: JSON.parse(Buffer.from(data.Payload).toString()),
    };
  };
}

async function v3WebToken(endpoint, token, own, foreign) {
  const { LambdaClient } = require('@aws-sdk/client-lambda');
  const { fromWebToken } = require('@aws-sdk/credential-providers');
  const credentials = fromWebToken({
    roleArn: 'arn:aws:iam::000000000000:role/ccstream-tenant',
    webIdentityToken: token,
    roleSessionName: 'node-v3',
    clientConfig: { endpoint, region: REGION },
  });
  const lambda = new LambdaClient({ endpoint, region: REGION, credentials, maxAttempts: 1 });
  await round(v3Invoker(lambda), own, foreign);
}

async function v3Cognito(endpoint, provider, token, own, foreign) {
  const { LambdaClient } = require('@aws-sdk/client-lambda');
  const { CognitoIdentityClient, GetIdCommand } = require('@aws-sdk/client-cognito-identity');
  const { fromCognitoIdentity } = require('@aws-sdk/credential-providers');
  const logins = { [provider]: token };
  const cognito = new CognitoIdentityClient({ endpoint, region: REGION });
  const { IdentityId } = await cognito.send(new GetIdCommand({ IdentityPoolId: POOL, Logins: logins }));
  const credentials = fromCognitoIdentity({ identityId: IdentityId, logins, client: cognito });
  const lambda = new LambdaClient({ endpoint, region: REGION, credentials, maxAttempts: 1 });
  await round(v3Invoker(lambda), own, foreign);
}

async function main() {
  const [mode, ...args] = process.argv.slice(2);
  const modes = { 'v2-cognito': [v2Cognito, 5], 'v3-web-token': [v3WebToken, 4], 'v3-cognito': [v3Cognito, 5] };
  const found = modes[mode];
  check(found && args.length === found[1], `usage: see the head of ${__filename}`);
  await found[0](...args);
  console.log('sdk.js: OK');
}

main().catch((e) => fail(`${e.name || 'Error'}: ${e.message}`));
